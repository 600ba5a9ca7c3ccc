# The dashboard on Vercel, built from dashboard/ by Vercel's Git integration: every push to
# the production branch deploys to production, every other branch gets a preview.

resource "vercel_project" "dashboard" {
  name             = "ferry-dashboard"
  framework        = "vite"
  root_directory   = "dashboard"
  install_command  = "npm ci"
  build_command    = "npm run build"
  output_directory = "dist"

  git_repository = {
    type              = "github"
    repo              = var.github_repo
    production_branch = var.production_branch
  }
}

# Baked into the build (import.meta.env.VITE_FERRY_RELAY): the dashboard connects to the
# relay's stable name, whichever droplet or load balancer is behind it.
resource "vercel_project_environment_variable" "relay" {
  project_id = vercel_project.dashboard.id
  key        = "VITE_FERRY_RELAY"
  value      = "wss://${local.relay_fqdn}"
  target     = ["production", "preview"]
}

resource "vercel_project_domain" "dashboard" {
  project_id = vercel_project.dashboard.id
  domain     = local.dashboard_fqdn
}

# First production build, so the dashboard answers right after `apply` instead of after the
# next push. Later deployments come from the Git integration.
resource "vercel_deployment" "dashboard" {
  project_id = vercel_project.dashboard.id
  ref        = var.production_branch
  production = true

  depends_on = [vercel_project_environment_variable.relay]
}
