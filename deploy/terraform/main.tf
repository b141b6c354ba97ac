data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  tags = merge(
    {
      Project            = "verger"
      ManagedBy          = "terraform"
      DataClassification = "personal-data"
    },
    var.tags,
  )

  account_id     = data.aws_caller_identity.current.account_id
  partition      = data.aws_partition.current.partition
  bucket_arn     = "arn:${local.partition}:s3:::${var.bucket_name}"
  internal_zone  = "${var.name}.internal"
  scheduler_host = "scheduler.${var.name}.internal"
}
