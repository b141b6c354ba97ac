# One scheduler and executor_count executors, in the private subnets, with
# no public address, IMDSv2 only and KMS-encrypted disks. At first boot
# cloud-init runs deploy/bootstrap.sh: it installs the SSM agent, fetches the
# release bundle from artifacts/ with the instance role and runs
# deploy/install.sh, which enables the machine's systemd unit.

data "aws_ami" "debian12" {
  count = var.ami_id == "" ? 1 : 0

  most_recent = true
  owners      = ["136693071363"] # Debian

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id = var.ami_id != "" ? var.ami_id : data.aws_ami.debian12[0].id

  bootstrap_b64 = base64encode(file("${path.module}/../bootstrap.sh"))

  user_data_common = {
    bucket        = aws_s3_bucket.data.bucket
    region        = var.region
    bundle_key    = var.bundle_key
    kms_key_arn   = aws_kms_key.data.arn
    scheduler     = local.scheduler_host
    tasks         = var.executor_concurrent_tasks
    bootstrap_b64 = local.bootstrap_b64
  }
}

resource "aws_instance" "scheduler" {
  ami                         = local.ami_id
  instance_type               = var.scheduler_instance_type
  subnet_id                   = aws_subnet.private[0].id
  vpc_security_group_ids      = [aws_security_group.scheduler.id, aws_security_group.egress.id]
  iam_instance_profile        = aws_iam_instance_profile.worker.name
  associate_public_ip_address = false
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_gb
    encrypted             = true
    kms_key_id            = aws_kms_key.data.arn
    delete_on_termination = true
  }

  user_data                   = templatefile("${path.module}/templates/user-data.yaml.tftpl", merge(local.user_data_common, { role = "scheduler" }))
  user_data_replace_on_change = true

  tags = {
    Name = "${var.name}-scheduler"
    Role = "scheduler"
  }

  lifecycle {
    ignore_changes = [ami]
  }

  depends_on = [aws_vpc_endpoint.s3, aws_vpc_endpoint.ssm]
}

resource "aws_instance" "executor" {
  count = var.executor_count

  ami                         = local.ami_id
  instance_type               = var.executor_instance_type
  subnet_id                   = aws_subnet.private[count.index % length(aws_subnet.private)].id
  vpc_security_group_ids      = [aws_security_group.executor.id, aws_security_group.egress.id]
  iam_instance_profile        = aws_iam_instance_profile.worker.name
  associate_public_ip_address = false
  monitoring                  = true
  ebs_optimized               = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_gb
    encrypted             = true
    kms_key_id            = aws_kms_key.data.arn
    delete_on_termination = true
  }

  user_data                   = templatefile("${path.module}/templates/user-data.yaml.tftpl", merge(local.user_data_common, { role = "executor" }))
  user_data_replace_on_change = true

  tags = {
    Name = "${var.name}-executor-${count.index}"
    Role = "executor"
  }

  lifecycle {
    ignore_changes = [ami]
  }

  depends_on = [aws_vpc_endpoint.s3, aws_vpc_endpoint.ssm, aws_route53_record.scheduler]
}
