# Ballista has no authentication of its own (gRPC, REST API and Arrow Flight
# are open to whoever can connect), so the network is the boundary:
#   scheduler  50050  from inside the VPC (executors poll it, the client submits)
#   executors  50051  from inside the VPC (shuffle between executors, results to the client)
# Pull scheduling is used, so the scheduler never connects to executors and
# the executors' gRPC port 50052 is not opened.

resource "aws_security_group" "scheduler" {
  name        = "${var.name}-scheduler"
  description = "verger scheduler: gRPC/REST 50050 from the VPC"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name}-scheduler" }
}

resource "aws_vpc_security_group_ingress_rule" "scheduler_grpc" {
  security_group_id = aws_security_group.scheduler.id
  description       = "Ballista scheduler gRPC + REST + health, from the VPC"
  ip_protocol       = "tcp"
  from_port         = 50050
  to_port           = 50050
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_security_group" "executor" {
  name        = "${var.name}-executor"
  description = "verger executors: Arrow Flight 50051 from the VPC"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name}-executor" }
}

resource "aws_vpc_security_group_ingress_rule" "executor_flight" {
  security_group_id = aws_security_group.executor.id
  description       = "Ballista executor Arrow Flight (shuffle, results), from the VPC"
  ip_protocol       = "tcp"
  from_port         = 50051
  to_port           = 50051
  cidr_ipv4         = var.vpc_cidr
}

# Outbound, shared by all verger machines: the cluster ports inside the VPC,
# HTTPS to the S3 gateway endpoint and to the interface endpoints, and (only
# with the NAT gateway) HTTP/HTTPS for apt.
resource "aws_security_group" "egress" {
  name        = "${var.name}-egress"
  description = "verger machines: outbound cluster traffic, S3 and VPC endpoints"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name}-egress" }
}

resource "aws_vpc_security_group_egress_rule" "cluster_ports" {
  security_group_id = aws_security_group.egress.id
  description       = "Ballista scheduler and executor ports inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 50050
  to_port           = 50051
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "s3" {
  security_group_id = aws_security_group.egress.id
  description       = "HTTPS to S3 through the gateway endpoint"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = aws_vpc_endpoint.s3.prefix_list_id
}

resource "aws_vpc_security_group_egress_rule" "endpoints" {
  security_group_id = aws_security_group.egress.id
  description       = "HTTPS to the interface endpoints (SSM) inside the VPC"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "internet_https" {
  count = var.enable_nat_gateway ? 1 : 0

  security_group_id = aws_security_group.egress.id
  description       = "HTTPS to the internet through the NAT gateway (apt)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "internet_http" {
  count = var.enable_nat_gateway ? 1 : 0

  security_group_id = aws_security_group.egress.id
  description       = "HTTP to the internet through the NAT gateway (apt; packages are signed)"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "endpoints" {
  name        = "${var.name}-endpoints"
  description = "Interface VPC endpoints: HTTPS from the VPC"
  vpc_id      = aws_vpc.this.id

  tags = { Name = "${var.name}-endpoints" }
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_https" {
  security_group_id = aws_security_group.endpoints.id
  description       = "HTTPS from the VPC"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = var.vpc_cidr
}
