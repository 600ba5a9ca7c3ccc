# The outside check: DigitalOcean Uptime probes the relay's public /healthz from other
# regions and alerts when it stops answering. ferry's own webhook (FERRY_WEBHOOK_URL) cannot
# say that ferry, its droplet or its network is gone; this can, and it also fires when the
# first boot refused to start ferry (the WAL volume was not mounted, see cloud-init).

resource "digitalocean_uptime_check" "relay" {
  name    = "ferry-relay-${var.node_id}"
  target  = "https://${local.relay_fqdn}/healthz"
  type    = "https"
  regions = var.uptime_regions
  enabled = true
}

resource "digitalocean_uptime_alert" "relay_down" {
  name     = "ferry relay ${local.relay_fqdn} is down"
  check_id = digitalocean_uptime_check.relay.id
  type     = "down"
  period   = "2m"

  notifications {
    email = length(var.alert_emails) > 0 ? var.alert_emails : [var.acme_email]

    dynamic "slack" {
      for_each = var.alert_slack_webhook_url == "" ? [] : [1]
      content {
        channel = "ferry"
        url     = var.alert_slack_webhook_url
      }
    }
  }
}
