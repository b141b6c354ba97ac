output "bucket" {
  description = "The data bucket."
  value       = aws_s3_bucket.data.bucket
}

output "kms_key_arn" {
  description = "The cluster key (bucket default encryption, EBS)."
  value       = aws_kms_key.data.arn
}

output "bundle_upload" {
  description = "Where deploy/make-bundle.sh's output must be uploaded before the machines boot."
  value       = "s3://${aws_s3_bucket.data.bucket}/${var.bundle_key} (+ .sha256)"
}

output "scheduler_instance_id" {
  description = "For: aws ssm start-session --target <id>"
  value       = aws_instance.scheduler.id
}

output "scheduler_url" {
  description = "What verger run --cluster takes, from inside the VPC."
  value       = "df://${local.scheduler_host}:50050"
}

output "executor_instance_ids" {
  description = "Executor machines."
  value       = aws_instance.executor[*].id
}

output "worker_role_arn" {
  description = "The machines' IAM role."
  value       = aws_iam_role.worker.arn
}
