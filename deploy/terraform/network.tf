# A VPC of its own with private subnets only. Without enable_nat_gateway
# there is no route to the internet at all: S3 is reached through a gateway
# endpoint and Systems Manager (shell access, no SSH) through interface
# endpoints.

resource "aws_vpc" "this" {
  #checkov:skip=CKV2_AWS_11:Flow logs are not set up yet (needs a log group or bucket of its own); see deploy/README.md, "Not done".
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = { Name = var.name }
}

# The default security group of the VPC admits nothing.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id

  tags = { Name = "${var.name}-default-deny" }
}

resource "aws_subnet" "private" {
  count = length(var.private_subnet_cidrs)

  vpc_id                  = aws_vpc.this.id
  cidr_block              = var.private_subnet_cidrs[count.index]
  availability_zone       = var.availability_zones[count.index]
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-private-${var.availability_zones[count.index]}" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id

  tags = { Name = "${var.name}-private" }
}

resource "aws_route_table_association" "private" {
  count = length(aws_subnet.private)

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# Optional outbound internet (apt) through a NAT gateway in a public subnet.
resource "aws_internet_gateway" "this" {
  count  = var.enable_nat_gateway ? 1 : 0
  vpc_id = aws_vpc.this.id

  tags = { Name = var.name }
}

resource "aws_subnet" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id                  = aws_vpc.this.id
  cidr_block              = var.public_subnet_cidr
  availability_zone       = var.availability_zones[0]
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-public-nat" }
}

resource "aws_route_table" "public" {
  count  = var.enable_nat_gateway ? 1 : 0
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this[0].id
  }

  tags = { Name = "${var.name}-public" }
}

resource "aws_route_table_association" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  count  = var.enable_nat_gateway ? 1 : 0
  domain = "vpc"

  tags = { Name = "${var.name}-nat" }
}

resource "aws_nat_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id

  tags       = { Name = var.name }
  depends_on = [aws_internet_gateway.this]
}

resource "aws_route" "private_nat" {
  count = var.enable_nat_gateway ? 1 : 0

  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

# S3 through a gateway endpoint: free, and traffic to the bucket never
# leaves the AWS network. The endpoint policy admits the data bucket and the
# regional buckets the SSM agent is installed and updated from.
data "aws_iam_policy_document" "s3_endpoint" {
  #checkov:skip=CKV_AWS_283:The SSM agent package is downloaded anonymously from AWS's public regional bucket; the data-bucket statement is limited to this account's principals.
  statement {
    sid    = "DataBucket"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions   = ["s3:*"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]
    condition {
      test     = "StringEquals"
      variable = "aws:PrincipalAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid    = "SystemsManagerAgent"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    actions = ["s3:GetObject"]
    resources = [
      "arn:${local.partition}:s3:::amazon-ssm-${var.region}/*",
      "arn:${local.partition}:s3:::amazon-ssm-packages-${var.region}/*",
      "arn:${local.partition}:s3:::${var.region}-birdwatcher-prod/*",
      "arn:${local.partition}:s3:::aws-ssm-${var.region}/*",
      "arn:${local.partition}:s3:::aws-ssm-document-attachments-${var.region}/*",
      "arn:${local.partition}:s3:::patch-baseline-snapshot-${var.region}/*",
    ]
  }
}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  policy            = data.aws_iam_policy_document.s3_endpoint.json

  tags = { Name = "${var.name}-s3" }
}

# Systems Manager Session Manager: shell access without SSH keys, bastion or
# inbound port.
resource "aws_vpc_endpoint" "ssm" {
  for_each = toset(["ssm", "ssmmessages", "ec2messages"])

  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true

  tags = { Name = "${var.name}-${each.key}" }
}

# scheduler.<name>.internal, so executors survive a scheduler replacement.
resource "aws_route53_zone" "internal" {
  name    = local.internal_zone
  comment = "verger cluster names"

  vpc {
    vpc_id = aws_vpc.this.id
  }
}

resource "aws_route53_record" "scheduler" {
  zone_id = aws_route53_zone.internal.zone_id
  name    = local.scheduler_host
  type    = "A"
  ttl     = 60
  records = [aws_instance.scheduler.private_ip]
}
