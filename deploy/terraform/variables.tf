variable "region" {
  description = "AWS region. The data must stay in the EU."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = startswith(var.region, "eu-")
    error_message = "GDPR: deploy verger in an EU region (eu-*)."
  }
}

variable "name" {
  description = "Prefix of every resource name."
  type        = string
  default     = "verger"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 lower-case letters, digits or dashes, starting with a letter."
  }
}

variable "bucket_name" {
  description = "Name of the data bucket (images/, results/, staging/, artifacts/). Globally unique."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name is not a valid S3 bucket name."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the cluster's VPC. Ports 50050/50051 are open to this range only."
  type        = string
  default     = "10.42.0.0/16"
}

variable "private_subnet_cidrs" {
  description = "One private subnet per availability zone, in the same order as availability_zones."
  type        = list(string)
  default     = ["10.42.1.0/24", "10.42.2.0/24"]
}

variable "availability_zones" {
  description = "Availability zones of the private subnets."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b"]
}

variable "enable_nat_gateway" {
  description = "Give the machines outbound internet (apt security updates) through a NAT gateway. Off: no path to the internet at all; S3 and SSM are reached through VPC endpoints."
  type        = bool
  default     = false
}

variable "public_subnet_cidr" {
  description = "Subnet for the NAT gateway (only used when enable_nat_gateway = true)."
  type        = string
  default     = "10.42.0.0/24"
}

variable "ami_id" {
  description = "AMI for all machines. Empty: the latest official Debian 12 (bookworm) amd64 AMI, the same glibc as the build machine."
  type        = string
  default     = ""
}

variable "scheduler_instance_type" {
  description = "The scheduler plans and tracks jobs; it runs no model."
  type        = string
  default     = "m6i.large"
}

variable "executor_instance_type" {
  description = "Executors decode images and run MobileNetV2. Nitro types such as c6i/m6i/c7i encrypt traffic between instances in transit."
  type        = string
  default     = "c6i.2xlarge"
}

variable "executor_count" {
  description = "Number of executor machines."
  type        = number
  default     = 2

  validation {
    condition     = var.executor_count >= 1 && var.executor_count <= 50
    error_message = "executor_count must be between 1 and 50."
  }
}

variable "executor_concurrent_tasks" {
  description = "Tasks (input slices) each executor runs at once (verger executor --concurrent-tasks)."
  type        = number
  default     = 2
}

variable "root_volume_gb" {
  description = "Root volume size. Executors keep shuffle files and spills there (encrypted with the cluster key)."
  type        = number
  default     = 60
}

variable "bundle_key" {
  description = "Object key of the release bundle (deploy/make-bundle.sh) in the data bucket; a <key>.sha256 must sit next to it."
  type        = string
  default     = "artifacts/verger-bundle.tar.gz"

  validation {
    condition     = startswith(var.bundle_key, "artifacts/")
    error_message = "bundle_key must be under artifacts/ (the only prefix the machines may read besides images/ and results/)."
  }
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the KMS key is deleted after a destroy."
  type        = number
  default     = 30
}

variable "staging_expiration_days" {
  description = "Objects under staging/ are deleted this many days after creation."
  type        = number
  default     = 7
}

variable "noncurrent_version_expiration_days" {
  description = "Overwritten or deleted object versions are kept this long, then purged (erasure requests complete within this delay)."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
