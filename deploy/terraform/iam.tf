# One role for every verger machine (scheduler and executors), used through
# the instance profile: no access key exists anywhere. Least privilege:
#   images/     read
#   results/    read-write (outputs, their _staging/, overwrite)
#   staging/    read-write
#   artifacts/  read (the release bundle at first boot)
#   KMS         use of the cluster key, only on behalf of S3 in this region
#   SSM         Session Manager (AmazonSSMManagedInstanceCore)

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "worker" {
  name                 = "${var.name}-worker"
  description          = "verger scheduler and executors"
  assume_role_policy   = data.aws_iam_policy_document.ec2_assume.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "ListOwnPrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        "images", "images/*",
        "results", "results/*",
        "staging", "staging/*",
        "artifacts/*",
      ]
    }
  }

  statement {
    sid     = "ReadInputsAndArtifacts"
    effect  = "Allow"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.data.arn}/images/*",
      "${aws_s3_bucket.data.arn}/artifacts/*",
    ]
  }

  statement {
    sid    = "ReadWriteResults"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${aws_s3_bucket.data.arn}/results/*",
      "${aws_s3_bucket.data.arn}/staging/*",
    ]
  }

  statement {
    sid       = "UseClusterKeyThroughS3"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "${var.name}-data-access"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role_policy_attachment" "ssm_core" {
  role       = aws_iam_role.worker.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "worker" {
  name = "${var.name}-worker"
  role = aws_iam_role.worker.name
}
