"""Config loading: precedence, errors that name the key, immutability, the FERRY_ prefix."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core import config as config_mod


def test_config_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    file = tmp_path / "f.toml"
    file.write_text('port = 1111\nhistory_size = 7\nwal_sync = "write"\n')
    env = {"FERRY_PORT": "2222", "FERRY_HISTORY_SIZE": "8", "PATH": "/bin"}
    cfg = config_mod.load({"port": "3333"}, env, str(file))
    assert cfg.port == 3333  # flag
    assert cfg.history_size == 8  # env over file
    assert cfg.wal_sync == "write"  # file over default
    assert cfg.max_frame_bytes == 64 * 1024  # default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FERRY_PORT": "99999"}, "port"),
        ({"FERRY_REPLAYER": "maybe"}, "replayer must be bool"),
        ({"FERRY_MAX_FRAME_BYTES": "1.5"}, "max_frame_bytes must be int"),
        ({"FERRY_NOPE": "1"}, "unknown setting FERRY_NOPE"),
        ({"FERRY_LOG_FORMAT": "xml"}, "log_format"),
        ({"FERRY_MAX_DATA_BYTES": "65536"}, "max_data_bytes .* must be less than max_frame"),
    ],
)
def test_config_errors_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(config_mod.ConfigError, match=message):
        config_mod.load({}, env)


def test_the_data_limit_leaves_room_in_a_frame_so_too_large_is_reachable() -> None:
    assert config_mod.load({}, {}).data_limit == 64 * 1024 - 1024
    small = config_mod.load({}, {"FERRY_MAX_FRAME_BYTES": "1024"})
    assert 0 < small.data_limit < small.max_frame_bytes
    explicit = config_mod.load({}, {"FERRY_MAX_DATA_BYTES": "1000"})
    assert explicit.data_limit == 1000


def test_config_is_frozen() -> None:
    cfg = config_mod.load({}, {})
    with pytest.raises(AttributeError):
        cfg.port = 1  # type: ignore[misc]  # assigning to the frozen field is the test


def test_allowed_origins_parse() -> None:
    cfg = config_mod.load({}, {"FERRY_ALLOWED_ORIGINS": "https://a, https://b"})
    assert cfg.allowed_origins == ("https://a", "https://b")


def test_no_test_or_dev_variable_takes_the_products_prefix() -> None:
    """Every FERRY_* name used by the tests, the dashboard's tooling and the docs is a real
    setting: exporting one never makes `ferry serve` refuse to start."""
    root = Path(__file__).resolve().parents[2]
    files = subprocess.run(
        ["git", "ls-files", "tests", "dashboard", "docs", "README.md", "Makefile", "scripts"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    # Not settings of `ferry serve`, and never read by it: the dashboard image's proxy
    # target, compose's image name, a CI output, a Python constant, the deliberately
    # unknown names the config tests feed in, and the Vite build variable.
    others = {"FERRY_UPSTREAM", "FERRY_IMAGE", "FERRY_DIGEST", "FERRY_BENCH_ENV", "FERRY_NOPE",
              "FERRY_TYPO_SETTING", "FERRY_RELAY"}  # fmt: skip
    found = set()
    for name in files:
        path = root / name
        if name == "docs/design.md":  # the design brief also names settings still to come
            continue
        if path.suffix in (".png", ".json") or "node_modules" in name or not path.is_file():
            continue
        found |= set(re.findall(r"\bFERRY_[A-Z][A-Z0-9_]*", path.read_text(errors="replace")))
    settings = {config_mod.env_name(name) for name in config_mod.FIELDS}
    assert found - settings - others == set()
