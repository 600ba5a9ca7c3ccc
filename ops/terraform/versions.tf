terraform {
  # terraform_data (>= 1.4); the s3 backend's use_lockfile (>= 1.10).
  required_version = ">= 1.10.0, < 2.0.0"

  # Exact versions: an upgrade is a reviewed change to this file (and to the lock file that
  # `terraform init` writes next to it; see ../README.md, "Provider lock file").
  required_providers {
    digitalocean = {
      source  = "digitalocean/digitalocean"
      version = "2.74.0"
    }
    vercel = {
      source  = "vercel/vercel"
      version = "3.14.1"
    }
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "5.11.0"
    }
  }

  # Remote state (partial configuration: bucket, endpoint and keys come from
  # `terraform init -backend-config=backend.hcl`; see backend.hcl.example and ../README.md).
  backend "s3" {}
}

# Tokens come from variables (TF_VAR_*), never from files.
provider "digitalocean" {
  token = var.do_token
}

provider "vercel" {
  api_token = var.vercel_api_token
  team      = var.vercel_team
}

provider "cloudflare" {
  api_token = var.cloudflare_api_token
}
