"""docker-compose.yml: valid by the Compose Specification, and the stack docs/design.md §7 asks for.

Two independent validations: the raw file against the Compose Specification JSON schema
(vendored from the pinned docker compose binary, see ops/tools/extract_compose_schema.py),
and `docker compose config` itself (interpolation with .env.example, then its own checks).
The assertions read compose's resolved output, so they see what `docker compose up` would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import ROOT
from tests.ops.support import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    compose_config,
    explain,
    known_ferry_settings,
    ops_tool,
    run,
)

SCHEMA_FILE = Path(__file__).with_name("compose-spec.json")
PINNED = re.compile(r"^[\w./-]+:\d+\.\d+(\.\d+)?([-.\w]*)?(@sha256:[0-9a-f]{64})?$")


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def test_raw_file_matches_the_compose_specification_schema(raw: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(raw), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_rejects_what_compose_rejects() -> None:
    # The vendored schema is not vacuous: an unknown key or start condition fails it.
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    good: dict[str, Any] = {"image": "x", "depends_on": {"db": {"condition": "service_healthy"}}}
    assert validator.is_valid({"services": {"a": good, "db": {"image": "y"}}})
    assert not validator.is_valid({"services": {"a": {**good, "bogus_key": 1}}})
    bad_condition: dict[str, Any] = {
        "image": "x",
        "depends_on": {"db": {"condition": "service_ready"}},
    }
    assert not validator.is_valid({"services": {"a": bad_condition}})


def test_vendored_schema_is_the_one_the_pinned_compose_binary_uses() -> None:
    binary = ops_tool("docker-compose")
    proc = run([sys.executable, ROOT / "ops/tools/extract_compose_schema.py", binary])
    assert proc.returncode == 0, explain(proc)
    assert json.loads(proc.stdout) == json.loads(SCHEMA_FILE.read_text()), (
        "docker compose changed its schema: refresh tests/ops/compose-spec.json with "
        "ops/tools/extract_compose_schema.py"
    )


def test_docker_compose_config_accepts_the_file_with_env_example() -> None:
    proc = run(
        [ops_tool("docker-compose"), "-f", COMPOSE_FILE, "--env-file", ENV_EXAMPLE, "config", "-q"]
    )
    assert proc.returncode == 0, explain(proc)


def test_required_secrets_must_be_set(tmp_path: Path) -> None:
    # Passwords and tokens have no defaults in the compose file: without .env it refuses.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = subprocess.run(
        [
            str(ops_tool("docker-compose")),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(empty),
            "config",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "MYSQL_PASSWORD" in proc.stderr or "FERRY_" in proc.stderr, proc.stderr


def test_three_services_on_one_network(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"dashboard", "ferry", "mysql"}
    assert len(config["networks"]) == 1
    (network,) = config["networks"]
    for name, service in services.items():
        assert set(service["networks"]) == {network}, name
        assert service.get("restart") in ("unless-stopped", "always"), name


def _ports(service: dict[str, Any]) -> list[tuple[int, str, str]]:
    return [(p["target"], str(p.get("published")), p.get("host_ip", "")) for p in service["ports"]]


def test_ports(config: dict[str, Any]) -> None:
    services = config["services"]
    assert _ports(services["dashboard"]) == [(80, "80", "")]
    assert _ports(services["ferry"]) == [(8080, "8080", "")]
    # The database is published for local tools, on loopback only.
    assert _ports(services["mysql"]) == [(3306, "3306", "127.0.0.1")]


def test_every_service_has_a_healthcheck(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert check.get("interval") and check.get("timeout") and check.get("retries"), name
    assert "/healthz" in " ".join(config["services"]["ferry"]["healthcheck"]["test"])
    assert "mysql" in " ".join(config["services"]["mysql"]["healthcheck"]["test"])


def test_start_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["ferry"]["depends_on"]["mysql"]["condition"] == "service_healthy"
    assert "ferry" in services["dashboard"]["depends_on"]
    assert "depends_on" not in services["mysql"]


def test_named_volumes(config: dict[str, Any]) -> None:
    services = config["services"]
    mounts = {
        name: {(v["type"], v["source"], v["target"]) for v in service.get("volumes", [])}
        for name, service in services.items()
    }
    assert ("volume", "ferry-data", "/data") in mounts["ferry"]
    assert ("volume", "mysql-data", "/var/lib/mysql") in mounts["mysql"]
    assert {"ferry-data", "mysql-data"} <= set(config["volumes"])


def test_images_are_built_from_the_dockerfile_targets_or_pinned(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["ferry"]["build"]["target"] == "ferry"
    assert services["dashboard"]["build"]["target"] == "dashboard"
    assert Path(services["ferry"]["build"]["context"]).resolve() == ROOT
    assert services["mysql"]["image"].startswith("mysql:")
    assert PINNED.match(services["mysql"]["image"]), services["mysql"]["image"]


def test_ferry_environment(config: dict[str, Any]) -> None:
    env = config["services"]["ferry"]["environment"]
    unknown = set(env) - known_ferry_settings()
    assert not unknown, f"not ferry settings (ferry refuses to start): {unknown}"
    assert re.fullmatch(r"mysql://[^:@/]+:[^@/]+@mysql:3306/\w+", env["FERRY_DB_URL"])
    assert env["FERRY_WAL_DIR"].startswith("/data/")
    assert env["FERRY_PORT"] == "8080"
    assert env["FERRY_NODE_ID"], "a fixed node id (not the container's hostname)"


def test_the_cluster_profile_adds_nats_and_a_second_node() -> None:
    proc = run(
        [
            ops_tool("docker-compose"), "--file", COMPOSE_FILE, "--env-file", ENV_EXAMPLE,
            "--profile", "cluster", "config", "--format", "json",
        ]
    )  # fmt: skip
    assert proc.returncode == 0, explain(proc)
    services = json.loads(proc.stdout)["services"]
    assert set(services) == {"dashboard", "ferry", "ferry-2", "mysql", "nats"}
    one, two = services["ferry"]["environment"], services["ferry-2"]["environment"]
    assert two["FERRY_NODE_ID"] == "ferry-2" != one["FERRY_NODE_ID"]
    assert two["FERRY_NATS_URL"] == one["FERRY_NATS_URL"] == "nats://nats:4222"
    assert set(two) - known_ferry_settings() == set()
    assert services["ferry-2"]["depends_on"]["nats"]["condition"] == "service_healthy"
    assert _ports(services["ferry-2"]) == [(8080, "8082", "")]
    assert {v["source"] for v in services["ferry-2"]["volumes"]} == {"ferry-data-2"}
    assert PINNED.match(services["nats"]["image"]), services["nats"]["image"]


def test_credentials_come_from_env_not_the_file(raw: dict[str, Any]) -> None:
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_URL$")
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key) and key != "FERRY_UPSTREAM":
                assert "${" in str(value), f"{name}.{key} is written into the compose file"


def test_env_example_covers_every_variable_and_env_is_ignored() -> None:
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    missing = used - example - {"FERRY_IMAGE", "DASHBOARD_IMAGE"}
    assert not missing, f".env.example lacks {missing}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
