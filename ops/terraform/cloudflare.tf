# Names in the Cloudflare zone. DNS-only (not proxied): Caddy on the droplet gets its own
# Let's Encrypt certificate for the relay name, and long-lived WebSockets don't go through
# Cloudflare's proxy time-outs.

# The node's own name, pointing at its droplet.
resource "cloudflare_dns_record" "node_a" {
  zone_id = var.cloudflare_zone_id
  name    = local.node_fqdn
  type    = "A"
  content = digitalocean_droplet.ferry.ipv4_address
  ttl     = 300
  proxied = false
  comment = "ferry node ${var.node_id} (managed by Terraform)"
}

resource "cloudflare_dns_record" "node_aaaa" {
  zone_id = var.cloudflare_zone_id
  name    = local.node_fqdn
  type    = "AAAA"
  content = digitalocean_droplet.ferry.ipv6_address
  ttl     = 300
  proxied = false
  comment = "ferry node ${var.node_id} (managed by Terraform)"
}

# The relay's stable name: the dashboard (and every client) always connects here. Today it
# is a CNAME to the one node; with several nodes it moves to the load balancer's name and
# nothing that connects has to change.
resource "cloudflare_dns_record" "relay" {
  zone_id = var.cloudflare_zone_id
  name    = local.relay_fqdn
  type    = "CNAME"
  content = local.node_fqdn
  ttl     = 300
  proxied = false
  comment = "ferry relay (managed by Terraform)"
}

resource "cloudflare_dns_record" "dashboard" {
  zone_id = var.cloudflare_zone_id
  name    = local.dashboard_fqdn
  type    = "CNAME"
  content = "cname.vercel-dns.com"
  ttl     = 300
  proxied = false
  comment = "ferry dashboard on Vercel (managed by Terraform)"
}
