# ferry on a droplet (Docker, started by cloud-init), its WAL on a block storage volume that
# outlives the droplet, a managed MySQL cluster reachable only from that droplet, and a
# firewall that lets in HTTPS (Caddy in front of ferry) and SSH only from admin_cidrs.

locals {
  relay_fqdn     = "${var.relay_subdomain}.${var.zone_name}"
  dashboard_fqdn = "${var.dashboard_subdomain}.${var.zone_name}"
  node_fqdn      = "${var.node_id}.${var.zone_name}"
  registry_host  = split("/", var.image)[0]
  tags           = ["ferry"]
}

resource "digitalocean_vpc" "ferry" {
  name     = "ferry-${var.region}"
  region   = var.region
  ip_range = "10.42.0.0/24"
}

# The WAL lives here, not on the droplet's disk: replacing the droplet (new image, new
# size, new cloud-init) keeps every message that was acked but not yet in MySQL.
resource "digitalocean_volume" "wal" {
  name                    = "ferry-wal-${var.node_id}"
  region                  = var.region
  size                    = var.wal_volume_size_gb
  initial_filesystem_type = "ext4"
  description             = "ferry WAL of node ${var.node_id}"
  tags                    = local.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "digitalocean_database_cluster" "mysql" {
  name                 = "ferry-mysql"
  engine               = "mysql"
  version              = "8"
  size                 = var.db_size
  region               = var.region
  node_count           = var.db_node_count
  private_network_uuid = digitalocean_vpc.ferry.id
  tags                 = local.tags

  maintenance_window {
    day  = "sunday"
    hour = "03:00:00"
  }

  lifecycle {
    prevent_destroy = true
  }
}

resource "digitalocean_database_db" "ferry" {
  cluster_id = digitalocean_database_cluster.mysql.id
  name       = "ferry"
}

resource "digitalocean_database_user" "ferry" {
  cluster_id = digitalocean_database_cluster.mysql.id
  name       = "ferry"
  # PyMySQL needs the `cryptography` package for caching_sha2_password's first login;
  # the connection itself is TLS (the cluster requires it), so the password never travels
  # in the clear either way.
  mysql_auth_plugin = "mysql_native_password"
}

# Only the droplet may connect to the database.
resource "digitalocean_database_firewall" "mysql" {
  cluster_id = digitalocean_database_cluster.mysql.id

  rule {
    type  = "droplet"
    value = digitalocean_droplet.ferry.id
  }
}

# The cluster's CA certificate (PEM): cloud-init writes it to /etc/ferry/mysql-ca.pem and
# the replayer verifies the server's certificate against it.
data "digitalocean_database_ca" "mysql" {
  cluster_id = digitalocean_database_cluster.mysql.id
}

locals {
  # user:password, the password URL-encoded (the cluster generates it).
  db_userinfo = join(":", [
    digitalocean_database_user.ferry.name,
    urlencode(digitalocean_database_user.ferry.password),
  ])
  db_ca_path = "/etc/ferry/mysql-ca.pem"
  db_url = format(
    # DigitalOcean's managed MySQL takes TLS only; the sink checks the server's certificate
    # against the cluster's CA (VERIFY_CA) and, with VERIFY_IDENTITY, its name too.
    "mysql://%s@%s:%d/%s?ssl-mode=%s&ssl-ca=%s",
    local.db_userinfo,
    digitalocean_database_cluster.mysql.private_host,
    digitalocean_database_cluster.mysql.port,
    digitalocean_database_db.ferry.name,
    var.db_ssl_mode,
    local.db_ca_path,
  )
}

resource "digitalocean_droplet" "ferry" {
  name       = var.node_id
  image      = var.droplet_image
  size       = var.droplet_size
  region     = var.region
  vpc_uuid   = digitalocean_vpc.ferry.id
  ssh_keys   = var.ssh_key_fingerprints
  volume_ids = [digitalocean_volume.wal.id]
  monitoring = true
  ipv6       = true
  tags       = local.tags

  user_data = templatefile("${path.module}/cloud-init.yaml.tftpl", {
    image             = var.image
    registry_host     = local.registry_host
    registry_auth     = var.registry_token == "" ? "" : base64encode("${var.registry_username}:${var.registry_token}")
    volume_name       = digitalocean_volume.wal.name
    relay_fqdn        = local.relay_fqdn
    acme_email        = var.acme_email
    node_id           = var.node_id
    db_url            = local.db_url
    db_ssl_mode       = var.db_ssl_mode
    db_ca_b64         = base64encode(data.digitalocean_database_ca.mysql.certificate)
    jwt_secret        = var.ferry_jwt_secret
    admin_token       = var.ferry_admin_token
    webhook_url       = var.ferry_webhook_url
    dashboard_origins = "https://${local.dashboard_fqdn},https://${local.relay_fqdn}"
  })

  lifecycle {
    # New code reaches the droplet by its pull timer (see cloud-init), not by replacing it.
    # A change to the droplet's configuration is applied deliberately:
    #   terraform apply -replace=digitalocean_droplet.ferry
    # (the WAL volume is detached and re-attached; nothing acked is lost).
    ignore_changes = [user_data]
  }
}

resource "digitalocean_firewall" "ferry" {
  #checkov:skip=CKV_DIO_4:a public relay: 80/443 must be open to every client (see ops/README.md)
  name        = "ferry"
  droplet_ids = [digitalocean_droplet.ferry.id]

  # HTTPS for wss://relay.<zone>/ws (Caddy terminates TLS and proxies to ferry on the
  # droplet's loopback). Port 80 only answers Let's Encrypt's HTTP-01 challenge and redirects.
  inbound_rule {
    protocol         = "tcp"
    port_range       = "443"
    source_addresses = ["0.0.0.0/0", "::/0"]
  }

  inbound_rule {
    protocol         = "tcp"
    port_range       = "80"
    source_addresses = ["0.0.0.0/0", "::/0"]
  }

  dynamic "inbound_rule" {
    for_each = length(var.admin_cidrs) > 0 ? [1] : []
    content {
      protocol         = "tcp"
      port_range       = "22"
      source_addresses = var.admin_cidrs
    }
  }

  # Out: image pulls, package updates, Let's Encrypt, webhooks, DNS, NTP.
  outbound_rule {
    protocol              = "tcp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }

  outbound_rule {
    protocol              = "udp"
    port_range            = "1-65535"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }

  outbound_rule {
    protocol              = "icmp"
    destination_addresses = ["0.0.0.0/0", "::/0"]
  }
}
