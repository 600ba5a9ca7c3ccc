"""Tokens, first-frame (`{"op":"auth"}` as the first frame, the default) and in the query:
refresh before expiry on the open connection, 4401 at expiry → getToken and reconnect, and
terminal closes (4403, 4401 with no way to get a token) that are never retried."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.clients.js.conftest import Serve
from tests.clients.js.node import scenario_env


def jwt_env() -> dict[str, str]:
    return {"FERRY_AUTH": "jwt", "FERRY_JWT_SECRET": "js-client-secret-" + uuid.uuid4().hex}


@pytest.mark.parametrize("auth", ["frame", "query"])
async def test_refresh_before_expiry_keeps_the_connection(
    serve: Serve, scenario: Any, auth: str
) -> None:
    env = jwt_env()
    server = serve(**env)
    script = scenario(
        "refresh",
        scenario_env(url=server.url, secret=env["FERRY_JWT_SECRET"], channel="room.r", auth=auth),
    )
    await script.start()
    report = await script.finish(30)
    assert report["calls"] >= 3, "two refreshes at least"
    assert report["closes"] == [] and report["readies"] == 1, "never reconnected"
    n = len(report["received"])
    assert report["received"] == list(range(n)) and report["acked"] == list(range(1, n + 1))
    assert report["gaps"] == [] and report["errors"] == []


@pytest.mark.parametrize("auth", ["frame", "query"])
async def test_expiry_closes_4401_then_get_token_and_resume(
    serve: Serve, scenario: Any, auth: str
) -> None:
    env = jwt_env()
    server = serve(**env)
    script = scenario(
        "refresh",
        scenario_env(
            url=server.url,
            secret=env["FERRY_JWT_SECRET"],
            channel="room.x",
            auth=auth,
            lead=-60_000,  # the refresh would come a minute after expiry: 4401 first
            calls=2,
        ),
    )
    await script.start()
    report = await script.finish(30)
    assert report["closes"] and set(report["closes"]) == {4401}, report["closes"]
    assert report["readies"] == len(report["closes"]) + 1
    assert report["calls"] >= 2
    n = len(report["received"])
    assert report["received"] == list(range(n)), "each once, in order, across reconnects"
    assert report["acked"] == list(range(1, n + 1))
    assert report["gaps"] == []


@pytest.mark.parametrize(
    ("case", "user", "auth", "close", "connected"),
    [
        # a refresh presenting another user's token
        ("refresh-other-user", "alice", "query", 4403, "welcomed"),
        ("refresh-other-user", "alice", "frame", 4403, "welcomed"),
        # first-frame auth as a reserved name: nobody may connect as it
        ("reserved-user", "ferry", "frame", 4403, "rejected 4403"),
        # no token at all and no getToken: the first ping is answered 4401
        ("no-token", "", "frame", 4401, "rejected 4401"),
    ],
)
async def test_terminal_closes_are_never_retried(
    serve: Serve, scenario: Any, case: str, user: str, auth: str, close: int, connected: str
) -> None:
    env = jwt_env()
    server = serve(**env)
    script = scenario(
        "terminal",
        scenario_env(url=server.url, secret=env["FERRY_JWT_SECRET"], user=user, auth=auth),
    )
    await script.start()
    report = await script.finish()  # it exits by itself: no retry timer is left
    assert report["closes"] == [close], case
    assert report["states"].count("connecting") == 1, report["states"]
    assert report["states"][-1] == "closed"
    assert report["connected"] == connected
    assert report["pub"] == "closed"
