# A Discord-compatible webhook message after each part is provisioned (and again whenever
# that part is replaced). A webhook that is down never fails the apply (on_failure =
# continue); the URL reaches curl through the environment, never on its command line.

locals {
  notify_parts = {
    relay = {
      title = "ferry relay provisioned"
      text  = "Droplet ${var.node_id} (${var.region}) with its WAL volume is up; ferry answers at wss://${local.relay_fqdn}/ws once its certificate is issued."
      ids   = [digitalocean_droplet.ferry.id, digitalocean_volume.wal.id, digitalocean_firewall.ferry.id]
    }
    database = {
      title = "ferry database provisioned"
      text  = "Managed MySQL ${digitalocean_database_cluster.mysql.name} (${var.db_node_count} node(s)), reachable only from ${var.node_id}."
      ids   = [digitalocean_database_cluster.mysql.id, digitalocean_database_firewall.mysql.id]
    }
    dns = {
      title = "ferry DNS provisioned"
      text  = "${local.relay_fqdn} -> ${local.node_fqdn} -> ${digitalocean_droplet.ferry.ipv4_address}; ${local.dashboard_fqdn} -> Vercel."
      ids   = [cloudflare_dns_record.relay.id, cloudflare_dns_record.node_a.id, cloudflare_dns_record.dashboard.id]
    }
    dashboard = {
      title = "ferry dashboard provisioned"
      text  = "Vercel project ${vercel_project.dashboard.name} builds dashboard/ on every push to ${var.production_branch}: https://${local.dashboard_fqdn}"
      ids   = [vercel_project.dashboard.id, vercel_deployment.dashboard.id]
    }
  }
}

resource "terraform_data" "notify" {
  for_each = local.notify_parts

  triggers_replace = each.value.ids

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = "[ -z \"$WEBHOOK_URL\" ] || curl -fsS --retry 3 --max-time 15 -H 'Content-Type: application/json' --data-binary \"$PAYLOAD\" \"$WEBHOOK_URL\""
    environment = {
      WEBHOOK_URL = var.notify_webhook_url
      PAYLOAD = jsonencode({
        username         = "ferry terraform"
        content          = "**${each.value.title}**"
        allowed_mentions = { parse = [] }
        embeds = [{
          title       = each.value.title
          description = each.value.text
          color       = 3066993
        }]
      })
    }
    on_failure = continue
  }
}
