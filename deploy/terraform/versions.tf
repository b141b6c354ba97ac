terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
  }

  # Keep the state out of laptops: an S3 backend in the same account, in a
  # bucket of its own (versioned, encrypted), e.g.
  #
  # backend "s3" {
  #   bucket       = "acme-terraform-state"
  #   key          = "verger/terraform.tfstate"
  #   region       = "eu-west-1"
  #   encrypt      = true
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
