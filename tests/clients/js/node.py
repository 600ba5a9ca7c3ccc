"""Running the JS client's Node scripts from pytest.

A scenario is a Node script under clients/js/test/integration/ that uses the built client
(`import { Ferry } from "ferry-client"`: the package resolves itself) with the `ws` package.
It prints one JSON object per line on stdout: progress events (`{"event": ...}`) while it
runs, and `{"report": {...}}` last; it may read commands, one per line, on stdin. The test
drives the relay (kills it, cuts its proxy) on those events and asserts on the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, UNIT, unavailable

CLIENT = ROOT / "clients" / "js"
SCENARIOS = CLIENT / "test" / "integration"


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (Node 20+)")
    if (
        not (CLIENT / "dist" / "index.js").is_file()
        or not (CLIENT / "node_modules" / "ws").is_dir()
    ):
        unavailable("clients/js is not built: scripts/bootstrap.sh client")
    return node


class NodeScript:
    """One scenario process: its events as they come, its report at the end."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None
        self.stderr = b""
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._err_reader: asyncio.Task[None] | None = None

    async def start(self) -> NodeScript:
        self.proc = await asyncio.create_subprocess_exec(
            node_binary(),
            str(SCENARIOS / f"{self.name}.mjs"),
            env=self.env,
            cwd=CLIENT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=1 << 26,  # a report is one (long) line
        )
        self._reader = asyncio.create_task(self._read())
        self._err_reader = asyncio.create_task(self._read_err())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # a stray console.log of the library is not ours to parse
            if "report" in obj:
                self.report = obj["report"]
            else:
                self.events.append(obj)
            self._changed.set()
        self._changed.set()

    async def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    async def wait_for(
        self, predicate: Callable[[], bool], what: str, timeout: float = UNIT * 2
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}: timed out after {timeout:.1f}s: {what}\n{self.diag()}"
                )
            if self._reader is not None and self._reader.done() and not predicate():
                raise AssertionError(f"{self.name} ended before {what}\n{self.diag()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.1))

    async def event(self, name: str, timeout: float = UNIT * 2) -> dict[str, Any]:
        """The first event called `name` (waiting for it if it has not come yet)."""
        await self.wait_for(lambda: any(e.get("event") == name for e in self.events), name, timeout)
        return next(e for e in self.events if e.get("event") == name)

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())

    async def finish(self, timeout: float = UNIT * 4) -> dict[str, Any]:
        """Wait for the report and for the process to exit by itself (0)."""
        assert self.proc is not None
        await self.wait_for(lambda: self.report is not None, "the report", timeout)
        try:
            code = await asyncio.wait_for(self.proc.wait(), UNIT)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: the process did not exit by itself after its report "
                f"(a timer or socket still open)\n{self.diag()}"
            ) from None
        if self._err_reader is not None:
            await self._err_reader
        assert code == 0, f"{self.name} exited {code}\n{self.diag()}"
        assert self.report is not None
        return self.report

    def diag(self) -> str:
        tail = self.events[-5:]
        return f"last events: {tail}\nstderr: {self.stderr.decode(errors='replace')[-3000:]}"

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for task in (self._reader, self._err_reader):
            if task is not None:
                with contextlib.suppress(Exception):
                    await task


def scenario_env(**values: Any) -> dict[str, str]:
    return {
        f"FERRYTEST_JS_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
        for k, v in values.items()
    }


def client_dir() -> Path:
    return CLIENT
