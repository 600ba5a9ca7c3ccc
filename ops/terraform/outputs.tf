output "relay_url" {
  description = "WebSocket endpoint of the relay (its stable name)."
  value       = "wss://${local.relay_fqdn}/ws"
}

output "relay_health_url" {
  description = "Liveness endpoint of the relay; CI waits on it after a rollout."
  value       = "https://${local.relay_fqdn}/healthz"
}

output "dashboard_url" {
  description = "The dashboard on Vercel."
  value       = "https://${local.dashboard_fqdn}"
}

output "droplet_ipv4" {
  description = "Public IPv4 of the ferry droplet."
  value       = digitalocean_droplet.ferry.ipv4_address
}

output "database_private_host" {
  description = "Private (VPC) host of the managed MySQL cluster."
  value       = digitalocean_database_cluster.mysql.private_host
}
