# One customer-managed key for the data bucket and the machines' disks
# (shuffle files and spills are personal data too). Rotated yearly.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource is the key itself; this is AWS's default key policy.
  #checkov:skip=CKV_AWS_111:A key policy's "*" resource is the key itself; this is AWS's default key policy.
  #checkov:skip=CKV_AWS_356:A key policy's "*" resource is the key itself; this is AWS's default key policy.
  # Standard key policy: the account administers the key and delegates its
  # use to IAM policies (the worker role gets Decrypt/GenerateDataKey via S3
  # only, see iam.tf).
  statement {
    sid    = "AccountAdministersKey"
    effect = "Allow"
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
    actions   = ["kms:*"]
    resources = ["*"]
  }
}

resource "aws_kms_key" "data" {
  description             = "${var.name}: data bucket and EBS volumes"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json

  tags = { Name = "${var.name}-data" }
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}
