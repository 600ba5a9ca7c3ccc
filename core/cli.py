"""The `ferry` command: serve, token, wal, replay, bench."""

from __future__ import annotations

import argparse
import logging
import sys

from common import logsetup
from core import config as config_mod

log = logging.getLogger("ferry")


def _cmd_serve(args: argparse.Namespace) -> int:
    notes: list[str] = []  # logged once logging is set up from this very config
    try:
        config = config_mod.load(vars(args), config_file=args.config, warn=notes.append)
    except config_mod.ConfigError as exc:
        print(f"ferry: configuration error: {exc}", file=sys.stderr)
        return 2
    logsetup.setup(config.log_level, config.log_format)
    for note in notes:
        log.warning("configuration: %s", note)
    import dataclasses
    import secrets

    made_admin_token = None
    if not config.admin_token:
        # Without one the dashboard can never show anything: make one for this run and
        # print where to open it (a configured token is never printed).
        made_admin_token = secrets.token_urlsafe(32)
        config = dataclasses.replace(config, admin_token=made_admin_token)
    if config.workers > 1:
        from core.workers import supervise

        def worker(worker_config: config_mod.Config, first: bool) -> int:
            return _serve(worker_config, made_admin_token if first else None)

        return supervise(config, worker)
    return _serve(config, made_admin_token)


def _serve(config: config_mod.Config, announce_admin_token: str | None) -> int:
    import uvloop

    from core.compose import run

    try:
        return uvloop.run(run(config, announce_admin_token=announce_admin_token))
    except Exception as exc:  # startup failures (WAL corruption, port in use) end here
        log.critical("ferry could not start: %s", exc)
        return 1


def _cmd_token(args: argparse.Namespace) -> int:
    from core.auth import make_token

    env = config_mod.env_name
    try:
        secret = args.secret or config_mod.from_environment("jwt_secret")
    except config_mod.ConfigError as exc:
        print(f"ferry token: {exc}", file=sys.stderr)
        return 2
    if not secret:
        print(
            f"ferry token: needs the relay's HS256 secret: --secret or {env('jwt_secret')} "
            f"(the one `ferry serve` runs with under {env('auth')}=jwt)",
            file=sys.stderr,
        )
        return 2
    print(make_token(secret, args.user, args.pub, args.sub, args.ttl))
    return 0


def _delegate(module: str, argv: list[str]) -> int:
    """Subcommands with their own parsers (`ferry wal`, `ferry replay`, `ferry bench`)."""
    import importlib

    if not logging.getLogger().handlers:
        logsetup.setup("info", "text")
    code: int = importlib.import_module(module).main(argv)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description="A durable WebSocket relay.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the relay, dashboard, metrics and replayer")
    config_mod.add_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    token = sub.add_parser("token", help="print a development JWT")
    token.add_argument("--user", required=True, help="the token's user (its `sub` claim)")
    token.add_argument(
        "--pub", action="append", default=[], metavar="PATTERN", help="publish pattern (repeatable)"
    )
    token.add_argument(
        "--sub",
        action="append",
        default=[],
        metavar="PATTERN",
        help="subscribe pattern (repeatable)",
    )
    token.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default: 3600)"
    )
    token.add_argument(
        "--secret",
        default=None,
        help=f"HS256 secret (default: {config_mod.env_name('jwt_secret')})",
    )
    token.set_defaults(func=_cmd_token)

    wal = sub.add_parser(
        "wal", help="inspect, verify, dump or repair a WAL directory", add_help=False
    )
    wal.add_argument("rest", nargs=argparse.REMAINDER)
    wal.set_defaults(func=lambda a: _delegate(DELEGATED["wal"], a.rest))

    replay = sub.add_parser(
        "replay", help="drain a WAL into a database (same replayer as serve)", add_help=False
    )
    replay.add_argument("rest", nargs=argparse.REMAINDER)
    replay.set_defaults(func=lambda a: _delegate(DELEGATED["replay"], a.rest))

    bench = sub.add_parser("bench", help="load generator and peer comparison", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=lambda a: _delegate(DELEGATED["bench"], a.rest))
    return parser


DELEGATED = {"wal": "wal.tool", "replay": "core.replay_tool", "bench": "bench.cli"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        # These parse their own arguments, --help included.
        return _delegate(DELEGATED[argv[0]], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
