"""The JS client's own unit tests (`node --test`, a scripted relay and a mock clock), the
bundle-size budget among them, run as one pytest test."""

from __future__ import annotations

import re
import subprocess

from tests.clients.js.node import CLIENT, node_binary
from tests.helpers import UNIT


def _count(out: str, what: str) -> int:
    """The `# pass N` / `# fail N` of node's test runner summary."""
    found = re.search(rf"^# {what} (\d+)$", out, re.M)
    assert found is not None, out[-3000:]
    return int(found.group(1))


def test_node_unit_tests_pass() -> None:
    node = node_binary()
    tests = sorted(str(p.relative_to(CLIENT)) for p in (CLIENT / "test").glob("*.test.mjs"))
    assert len(tests) >= 6, tests
    run = subprocess.run(
        [node, "--test", *tests], cwd=CLIENT, capture_output=True, text=True, timeout=UNIT * 12
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    passed, failed = _count(out, "pass"), _count(out, "fail")
    assert failed == 0 and passed >= 45, out[-3000:]
    size = re.search(r"ferry-client core: \d+ B minified, (\d+) B min\+gzip", out)
    assert size is not None and int(size.group(1)) <= 6 * 1024, out[-3000:]
