"""Settings declared once (core/config.py `setting()`): checks and help derived from the one
declaration, defaults checked like any value, the `log` -> `durability` rename, and the
replayer child and the `ferry replay`/`ferry token` tools taking what `ferry serve` resolved."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import socket
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from core import cli, replay_tool
from core import config as config_mod
from tests.helpers import UNIT, ConfigOverrides, ServeProcess, wait_for_sync
from wal.segment import MAX_NODE_ID_BYTES

# The deprecated spellings, derived so that no test file names an unknown FERRY_* variable.
OLD_ENV = config_mod.env_name("log")


def test_every_setting_is_declared_with_help() -> None:
    assert config_mod.SPECS.keys() == config_mod.FIELDS.keys()
    for name, spec in config_mod.SPECS.items():
        assert spec.help, name


def test_the_tests_config_overrides_are_configs_fields() -> None:
    """ConfigOverrides (the typed **overrides of relay_config and start_relay in
    tests/helpers.py) names every setting, with its type, and nothing else."""
    assert get_type_hints(ConfigOverrides) == get_type_hints(config_mod.Config)


def test_constant_defaults_pass_their_own_checks() -> None:
    for name, field in config_mod.FIELDS.items():
        if field.default_factory is dataclasses.MISSING:
            assert config_mod._problem(name, field.default) is None, name


def test_literal_choices_are_the_check_and_the_metavar() -> None:
    assert config_mod.choices("durability") == ("wal", "memory")
    assert config_mod.choices("port") == ()
    with pytest.raises(config_mod.ConfigError, match=r"durability.*one of wal, memory"):
        config_mod.load({}, {"FERRY_DURABILITY": "disk"})
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve_help = commands.choices["serve"].format_help()
    assert "--durability {wal,memory}" in serve_help
    assert "--log-format {text,json}" in serve_help
    assert "--log " not in serve_help  # the deprecated alias is accepted, not advertised


def test_node_id_counts_utf8_bytes_like_the_wal_header() -> None:
    assert config_mod.NODE_ID_MAX_BYTES == MAX_NODE_ID_BYTES
    fits = "é" * (MAX_NODE_ID_BYTES // 2)  # 2 bytes each
    assert config_mod.load({}, {"FERRY_NODE_ID": fits}).node_id == fits
    with pytest.raises(config_mod.ConfigError, match=r"FERRY_NODE_ID.*1\.\.64 UTF-8 bytes"):
        config_mod.load({}, {"FERRY_NODE_ID": fits + "é"})  # 33 characters, 66 bytes


def test_the_default_node_id_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 65)
    with pytest.raises(config_mod.ConfigError, match=r"default \(set FERRY_NODE_ID\): node_id"):
        config_mod.load({}, {})
    assert config_mod.load({}, {"FERRY_NODE_ID": "n1"}).node_id == "n1"


def test_durability_is_the_new_name_everywhere(tmp_path: Path) -> None:
    assert config_mod.load({}, {}).durability == "wal"
    assert config_mod.load({}, {"FERRY_DURABILITY": "memory"}).durability == "memory"
    assert config_mod.load({"durability": "memory"}, {}).durability == "memory"
    file = tmp_path / "f.toml"
    file.write_text('durability = "memory"\n')
    assert config_mod.load({}, {}, str(file)).durability == "memory"


def _load_noting(**kwargs: Any) -> tuple[config_mod.Config, list[str]]:
    notes: list[str] = []
    return config_mod.load(warn=notes.append, **kwargs), notes


def test_the_old_name_log_still_works_with_a_warning(tmp_path: Path) -> None:
    cfg, notes = _load_noting(environ={OLD_ENV: "memory"})
    assert cfg.durability == "memory"
    assert notes == [
        f"{OLD_ENV} is deprecated: use FERRY_DURABILITY (the old name will stop working)"
    ]

    args = cli.build_parser().parse_args(["serve", "--log", "memory"])
    cfg, notes = _load_noting(flags=vars(args), environ={})
    assert cfg.durability == "memory"
    assert notes and notes[0].startswith("--log is deprecated: use --durability")

    file = tmp_path / "f.toml"
    file.write_text('log = "memory"\n')
    cfg, notes = _load_noting(environ={}, config_file=str(file))
    assert cfg.durability == "memory"
    assert notes and notes[0].startswith("'log' is deprecated: use 'durability'")


def test_the_new_name_wins_over_the_old_one_in_the_same_source() -> None:
    cfg, notes = _load_noting(environ={OLD_ENV: "memory", "FERRY_DURABILITY": "wal"})
    assert cfg.durability == "wal" and len(notes) == 1
    # ... and a higher source's old name still beats a lower source's new one.
    cfg, _ = _load_noting(flags={"log": "memory"}, environ={"FERRY_DURABILITY": "wal"})
    assert cfg.durability == "memory"


def test_the_old_name_is_checked_as_the_new_one() -> None:
    with pytest.raises(config_mod.ConfigError, match=rf"{OLD_ENV}: durability = 'disk'"):
        _load_noting(environ={OLD_ENV: "disk"})


def test_ferry_replay_takes_serves_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FERRY_WAL_DIR", "FERRY_DB_URL", "FERRY_NODE_ID"):
        monkeypatch.delenv(name, raising=False)
    args = replay_tool.build_parser().parse_args([])
    replay_tool._resolve_shared(args)
    assert (args.wal_dir, args.db, args.node) == (
        config_mod.default("wal_dir"),
        config_mod.default("db_url"),
        None,  # the WAL's own node id, read once the directory is known
    )
    monkeypatch.setenv("FERRY_WAL_DIR", "/x/wal")
    monkeypatch.setenv("FERRY_NODE_ID", "n7")
    args = replay_tool.build_parser().parse_args(["--db", "sqlite:///y.db"])
    replay_tool._resolve_shared(args)
    assert (args.wal_dir, args.db, args.node) == ("/x/wal", "sqlite:///y.db", "n7")


def test_ferry_replay_refuses_a_bad_shared_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FERRY_NODE_ID", "n" * 65)
    assert replay_tool.main([]) == 2
    assert "FERRY_NODE_ID" in capsys.readouterr().err


def test_ferry_token_reads_serves_secret_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from core.auth import Authenticator

    secret = "s" * 32
    monkeypatch.setenv("FERRY_JWT_SECRET", secret)
    assert cli.main(["token", "--user", "u1", "--sub", "a.*"]) == 0
    token = capsys.readouterr().out.strip()
    relay = Authenticator(config_mod.Config(auth="jwt", jwt_secret=secret))
    assert relay.authenticate(token, {}).principal.user == "u1"
    monkeypatch.delenv("FERRY_JWT_SECRET")
    assert cli.main(["token", "--user", "u1"]) == 2
    assert "FERRY_JWT_SECRET" in capsys.readouterr().err


def _json_lines(text: str) -> list[dict[str, Any]]:
    docs = []
    for line in text.splitlines():
        try:
            docs.append(json.loads(line))
        except ValueError:
            continue
    return docs


def test_serve_log_format_json_reaches_the_replayer_child(tmp_path: Path) -> None:
    """The flag (not an environment variable) sets the format: the child gets it from serve."""
    server = ServeProcess(
        {
            "FERRY_WAL_DIR": str(tmp_path / "wal"),
            "FERRY_DB_URL": f"sqlite:///{tmp_path / 'ferry.db'}",
            OLD_ENV: "wal",
        },
        args=["--log-format", "json"],
    ).start(tmp_path / "serve.log")
    try:
        server.wait_healthy()

        def child_logged() -> bool:
            return any(
                doc.get("logger") == "ferry.replayer" and doc["msg"].startswith("replaying from")
                for doc in _json_lines(server.output())
            )

        wait_for_sync(child_logged, UNIT * 4, "a JSON log line from the replayer child")
        text_lines = [
            line
            for line in server.output().splitlines()
            if line.strip() and not line.startswith("{")
        ]
        assert text_lines == [], text_lines
        notes = [d for d in _json_lines(server.output()) if d.get("logger") == "ferry"]
        assert any(f"{OLD_ENV} is deprecated" in d["msg"] for d in notes), notes
    finally:
        server.signal(signal.SIGTERM)
        try:
            server.wait()
        finally:
            server.kill()
