# Non-secret settings, as an example: copy to terraform.tfvars (gitignore it if it grows
# anything private) or pass with -var-file. Secrets are never here: they come from the
# environment as TF_VAR_do_token, TF_VAR_cloudflare_api_token, TF_VAR_vercel_api_token,
# TF_VAR_ferry_jwt_secret, TF_VAR_ferry_admin_token, TF_VAR_notify_webhook_url,
# TF_VAR_ferry_webhook_url, TF_VAR_registry_token and TF_VAR_alert_slack_webhook_url.
# The tests scan the configuration with these values (tests/ops/test_terraform.py).

image                = "ghcr.io/ferry-dev/ferry:main"
github_repo          = "ferry-dev/ferry"
node_id              = "ferry-1"
region               = "fra1"
ssh_key_fingerprints = ["3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa"]
admin_cidrs          = ["203.0.113.0/24"]
acme_email           = "ops@example.com"
cloudflare_zone_id   = "023e105f4ecef8ad9ca31a8372d0c353"
zone_name            = "example.com"
registry_username    = "ferry-deploy"
alert_emails         = ["ops@example.com"]
