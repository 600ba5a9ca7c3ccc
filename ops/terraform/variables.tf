# Every secret is `sensitive = true` and has no default: pass it as TF_VAR_<name> from a
# secret store (GitHub Actions secrets in CI), never in a .tfvars file in the repository.

# ---- provider credentials -------------------------------------------------------------------

variable "do_token" {
  description = "DigitalOcean API token (droplet, volume, firewall, managed MySQL)."
  type        = string
  sensitive   = true
}

variable "cloudflare_api_token" {
  description = "Cloudflare API token with DNS edit permission on the zone."
  type        = string
  sensitive   = true
}

variable "vercel_api_token" {
  description = "Vercel API token."
  type        = string
  sensitive   = true
}

variable "vercel_team" {
  description = "Vercel team slug or id; null for a personal account."
  type        = string
  default     = null
}

# ---- application secrets --------------------------------------------------------------------

variable "ferry_jwt_secret" {
  description = "FERRY_JWT_SECRET: HS256 secret that client tokens are signed with."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9._~+/=-]{32,}$", var.ferry_jwt_secret))
    error_message = "ferry_jwt_secret: at least 32 characters from A-Z a-z 0-9 . _ ~ + / = - (e.g. openssl rand -base64 48)."
  }
}

variable "ferry_admin_token" {
  description = "FERRY_ADMIN_TOKEN: grants everything, $sys.* (the dashboard's feeds) included."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^[A-Za-z0-9._~-]{24,}$", var.ferry_admin_token))
    error_message = "ferry_admin_token: at least 24 URL-safe characters, A-Z a-z 0-9 . _ ~ - (it travels as ?token=)."
  }
}

variable "notify_webhook_url" {
  description = "Discord-compatible webhook told when each part is provisioned (\"\" = off)."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.notify_webhook_url == "" || can(regex("^https://[^'\"\\s]+$", var.notify_webhook_url))
    error_message = "notify_webhook_url must be an https:// URL."
  }
}

variable "ferry_webhook_url" {
  description = "FERRY_WEBHOOK_URL: webhook for ferry's runtime events (start, db_down, ...; \"\" = off)."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.ferry_webhook_url == "" || can(regex("^https://[^'\"\\s]+$", var.ferry_webhook_url))
    error_message = "ferry_webhook_url must be an https:// URL."
  }
}

variable "registry_username" {
  description = "User the droplet pulls the image as (\"\" when the image is public)."
  type        = string
  default     = ""
}

variable "registry_token" {
  description = "Read-only registry token for registry_username (\"\" when the image is public)."
  type        = string
  sensitive   = true
  default     = ""
}

# ---- what to run, and where -----------------------------------------------------------------

variable "image" {
  description = "ferry image the droplet runs. A moving tag (main): the droplet pulls it every few minutes, so a push to main rolls out without touching the droplet."
  type        = string
  default     = "ghcr.io/ferry-dev/ferry:main"
}

variable "github_repo" {
  description = "owner/name of the GitHub repository: Vercel builds dashboard/ from it on every push."
  type        = string
  default     = "ferry-dev/ferry"
}

variable "production_branch" {
  description = "Branch whose pushes go to production (Vercel) and roll out to the droplet (CI)."
  type        = string
  default     = "main"
}

variable "node_id" {
  description = "FERRY_NODE_ID: stable node id (WAL segments and database rows carry it); also the droplet's DNS label."
  type        = string
  default     = "ferry-1"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.node_id))
    error_message = "node_id must be a DNS label: lowercase letters, digits and '-'."
  }
}

variable "region" {
  description = "DigitalOcean region for the droplet, its volume and the database."
  type        = string
  default     = "fra1"
}

variable "droplet_size" {
  description = "Droplet size slug."
  type        = string
  default     = "s-2vcpu-4gb"
}

variable "droplet_image" {
  description = "Droplet OS image (cloud-init installs Docker from its packages)."
  type        = string
  default     = "ubuntu-24-04-x64"
}

variable "wal_volume_size_gb" {
  description = "Block storage for the WAL: it must hold the backlog of a long database outage."
  type        = number
  default     = 50
}

variable "db_size" {
  description = "Managed MySQL node size slug."
  type        = string
  default     = "db-s-1vcpu-1gb"
}

variable "db_node_count" {
  description = "Managed MySQL nodes (2+ adds a standby that takes over on failure)."
  type        = number
  default     = 1
}

variable "db_ssl_mode" {
  description = "How the replayer checks the managed MySQL's TLS certificate: VERIFY_CA (signed by the cluster's CA) or VERIFY_IDENTITY (also issued for the private host name)."
  type        = string
  default     = "VERIFY_CA"

  validation {
    condition     = contains(["VERIFY_CA", "VERIFY_IDENTITY"], var.db_ssl_mode)
    error_message = "db_ssl_mode must be VERIFY_CA or VERIFY_IDENTITY (the certificate is always verified)."
  }
}

variable "ssh_key_fingerprints" {
  description = "Fingerprints of SSH keys already in the DigitalOcean account, installed for root on the droplet (no password login)."
  type        = list(string)

  validation {
    condition     = length(var.ssh_key_fingerprints) > 0
    error_message = "Give at least one SSH key: without one DigitalOcean mails a root password."
  }
}

variable "admin_cidrs" {
  description = "CIDRs allowed to reach the droplet over SSH. Empty: no SSH from anywhere (use the DigitalOcean console)."
  type        = list(string)
  default     = []
}

variable "acme_email" {
  description = "Contact address for the Let's Encrypt certificate of the relay's name."
  type        = string
}

# ---- outside check --------------------------------------------------------------------------

variable "uptime_regions" {
  description = "DigitalOcean Uptime regions that probe https://<relay>/healthz (us_east, us_west, eu_west, se_asia)."
  type        = list(string)
  default     = ["eu_west", "us_east"]

  validation {
    condition     = length(var.uptime_regions) > 0 && alltrue([for r in var.uptime_regions : contains(["us_east", "us_west", "eu_west", "se_asia"], r)])
    error_message = "uptime_regions: one or more of us_east, us_west, eu_west, se_asia."
  }
}

variable "alert_emails" {
  description = "Who DigitalOcean mails when the relay stops answering (empty: acme_email)."
  type        = list(string)
  default     = []
}

variable "alert_slack_webhook_url" {
  description = "Slack incoming webhook for the relay-down alert (a Discord webhook URL with /slack appended works too); \"\" = e-mail only."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.alert_slack_webhook_url == "" || can(regex("^https://[^'\"\\s]+$", var.alert_slack_webhook_url))
    error_message = "alert_slack_webhook_url must be an https:// URL."
  }
}

# ---- DNS ------------------------------------------------------------------------------------

variable "cloudflare_zone_id" {
  description = "Id of the Cloudflare zone the names below live in."
  type        = string
}

variable "zone_name" {
  description = "The zone's domain, e.g. example.com."
  type        = string
}

variable "relay_subdomain" {
  description = "Stable name of the relay: <relay_subdomain>.<zone_name> (what the dashboard connects to)."
  type        = string
  default     = "relay"
}

variable "dashboard_subdomain" {
  description = "Name of the dashboard on Vercel: <dashboard_subdomain>.<zone_name>."
  type        = string
  default     = "dashboard"
}
