"""The one table from exceptions to what a client sees (core/errors.py `ANSWERS`): it
answers every code the protocol documents, never leaks an unexpected exception's text,
and is the only place in core that picks a code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from common.errors import FerryError, LogUnavailable, RecordRefused
from core import errors
from core.errors import ANSWERS, CloseCode, ErrorCode, answer_for
from tests.core.world import World

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_the_protocol_has_is_answered_by_the_table() -> None:
    answered = {answer.code for answer in ANSWERS.values()}
    assert set(ErrorCode) <= answered
    assert set(CloseCode) <= answered


def _documented(section: str, pattern: str) -> set[str]:
    text = (ROOT / "docs" / "protocol.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(pattern, body, re.MULTILINE))


def test_docs_list_exactly_the_codes_the_table_sends() -> None:
    assert _documented("Errors", r"^\| `([a-z_]+)` \|") == {code.value for code in ErrorCode}
    assert _documented("Close codes", r"^\| (\d{4}) \|") == {str(int(c)) for c in CloseCode}


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("password=hunter2 at /srv/ferry/wal"),
        OSError(28, "No space left on device: '/var/lib/ferry/wal/000001.wal'"),
        KeyError("secret"),
    ],
)
def test_an_unexpected_exception_closes_1011_with_a_fixed_reason(exc: BaseException) -> None:
    assert answer_for(exc) == (CloseCode.INTERNAL_ERROR, "internal error")


def test_local_errors_answer_a_fixed_text_not_their_own() -> None:
    code, reason = answer_for(LogUnavailable("fdatasync: EIO on /var/lib/ferry/wal/000007.wal"))
    assert code is ErrorCode.UNAVAILABLE and "/var" not in reason and "EIO" not in reason
    code, reason = answer_for(RecordRefused("payload of 5000000 bytes > 4194304"))
    assert code is ErrorCode.TOO_LARGE and "4194304" not in reason


def test_peer_errors_and_closes_carry_their_own_client_text() -> None:
    assert answer_for(errors.Forbidden("not allowed to publish to a")) == (
        ErrorCode.FORBIDDEN,
        "not allowed to publish to a",
    )
    assert answer_for(errors.SlowConsumer("slow consumer: outbox limit exceeded")) == (
        CloseCode.SLOW_CONSUMER,
        "slow consumer: outbox limit exceeded",
    )


def test_every_error_core_defines_is_in_the_tree_and_the_table() -> None:
    defined = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    for cls in defined:
        assert issubclass(cls, FerryError), cls
        # roots: nothing raises them as such
        if cls in (FerryError, errors.ClientFacing, errors.Closing):
            continue
        nearest = next(c for c in cls.__mro__ if c in ANSWERS)
        assert nearest is not BaseException, f"{cls.__name__} falls through to 'internal error'"


def test_no_module_in_core_picks_a_code_but_the_table() -> None:
    """`CloseCode.X` / `ErrorCode.X` and literal close codes appear in core/errors.py only:
    every other site raises or passes an exception, and the table decides."""
    offenders = []
    codes = {code.value for code in ErrorCode}
    for path in sorted((ROOT / "core").glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("CloseCode", "ErrorCode")
            ):
                offenders.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("close", "error"):
                for arg in node.args[:1]:
                    if isinstance(arg, ast.Constant) and (
                        isinstance(arg.value, int) or arg.value in codes
                    ):
                        offenders.append(f"{path.name}:{node.lineno} literal code {arg.value!r}")
    assert not offenders, offenders


def test_a_fault_while_flushing_closes_that_connection_1011_without_its_text() -> None:
    world = World()
    peer = world.connect("u")
    world.tick()
    peer.session.outbox.fault(RuntimeError("socket buffer at 0x7f00 is gone"))
    world.tick()
    assert peer.closes == [(CloseCode.INTERNAL_ERROR, "internal error")]
