"""Tokens: `exp` required and enforced for the life of a connection, refresh without
reconnecting, secrets long enough, reserved names, inboxes out of wildcards' reach."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Unpack

import jwt
import pytest
import websockets

from core import config as config_mod
from core.auth import Authenticator, Grant, Principal, make_token
from core.errors import AuthError, CloseCode
from tests.core.world import World
from tests.helpers import UNIT, Client, ConfigOverrides, StartRelay, relay_config

SECRET = "a-test-secret-that-is-long-enough-0123456789"


def authenticator(**overrides: Unpack[ConfigOverrides]) -> Authenticator:
    config = replace(relay_config(auth="jwt", jwt_secret=SECRET), **overrides)
    return Authenticator(config)


def token(claims: dict[str, object]) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_a_token_without_exp_is_refused() -> None:
    with pytest.raises(AuthError, match="no 'exp'"):
        authenticator().authenticate(token({"sub": "alice", "pub": ["*"]}), {})


def test_a_token_living_longer_than_the_limit_is_refused() -> None:
    now = time.time()
    auth = authenticator(jwt_max_ttl=3600.0)
    with pytest.raises(AuthError, match="jwt_max_ttl"):
        auth.authenticate(token({"sub": "alice", "exp": now + 7200}), {})
    grant = auth.authenticate(token({"sub": "alice", "exp": now + 600}), {})
    assert grant.principal.user == "alice" and grant.expires_at == pytest.approx(now + 600, abs=1)
    # jwt_max_ttl = 0 allows any lifetime (the setting for long-lived service tokens)
    assert authenticator(jwt_max_ttl=0.0).authenticate(token({"sub": "svc", "exp": now + 1e8}), {})


@pytest.mark.parametrize("name", ["admin", "ferry", "anonymous"])
def test_reserved_names_are_nobodys_under_jwt(name: str) -> None:
    with pytest.raises(AuthError, match="reserved"):
        authenticator().authenticate(make_token(SECRET, name, ["*"], ["*"]), {})


@pytest.mark.parametrize("name", ["admin", "ferry"])
def test_reserved_names_are_nobodys_with_auth_off(name: str) -> None:
    auth = Authenticator(relay_config())
    with pytest.raises(AuthError, match="reserved"):
        auth.authenticate(None, {"user": name})
    assert auth.authenticate(None, {"user": "bob"}).principal.user == "bob"


def test_no_wildcard_reaches_another_users_inbox() -> None:
    everything = Principal(user="eve", sub_patterns=("*",))
    assert not everything.can_subscribe("@bob") and not everything.can_subscribe("@admin")
    assert not Principal(user="eve", sub_patterns=("@*",)).can_subscribe("@bob")
    assert everything.can_subscribe("@eve") and everything.can_subscribe("room.1")
    assert everything.can_publish("@bob")  # direct messages are publishes
    granted = Principal(user="support", sub_patterns=("@bob", "room.*"))
    assert granted.can_subscribe("@bob") and not granted.can_subscribe("@carol")
    assert Principal(user="admin", admin=True).can_subscribe("@bob")


@pytest.mark.parametrize("name", ["jwt_secret", "admin_token"])
def test_short_secrets_refuse_to_start(name: str) -> None:
    env = {"FERRY_AUTH": "jwt", "FERRY_JWT_SECRET": SECRET, f"FERRY_{name.upper()}": "short"}
    with pytest.raises(config_mod.ConfigError, match=r"at least 32 bytes.*secrets\.token_urlsafe"):
        config_mod.load({}, env)


def test_a_connection_is_closed_when_its_token_expires() -> None:
    world = World()
    peer = world.connect("alice", expires_at=world.loop.time + 30)
    world.loop.advance(29)
    assert not peer.closes
    world.loop.advance(2)
    assert peer.closes == [(CloseCode.TOKEN_EXPIRED, "token expired: connect again with a new one")]


def test_refresh_moves_the_expiry_and_the_rights() -> None:
    world = World()
    peer = world.connect("alice", sub=("room.*", "news"), expires_at=world.loop.time + 30)
    peer.send({"op": "sub", "ch": "room.1"})
    peer.send({"op": "sub", "ch": "news"})
    narrower = Principal(user="alice", sub_patterns=("room.*",))
    world.grants["t2"] = Grant(narrower, world.loop.time + 300)
    peer.send({"op": "auth", "token": "t2", "id": 9})
    world.loop.advance(100)  # past the first token's expiry
    assert not peer.closes
    assert peer.ops("refreshed") == [
        {"op": "refreshed", "user": "alice", "exp": int(world.loop.time - 100 + 300), "id": 9}
    ]
    (dropped,) = peer.ops("unsubscribed")
    assert dropped["ch"] == "news" and "does not allow" in dropped["reason"]
    assert peer.session.subscriptions == {"@alice", "room.1"}
    world.loop.advance(201)
    assert peer.closes and peer.closes[0][0] == CloseCode.TOKEN_EXPIRED


def test_refresh_with_a_bad_token_closes_4401_and_another_users_4403() -> None:
    world = World()
    bad = world.connect("alice")
    bad.send({"op": "auth", "token": "nonsense"})
    assert bad.closes[0][0] == CloseCode.TOKEN_EXPIRED
    other = world.connect("alice")
    world.grants["bob"] = Grant(Principal(user="bob"), None)
    other.send({"op": "auth", "token": "bob"})
    assert other.closes[0][0] == CloseCode.AUTH_FORBIDDEN


async def test_token_expiry_closes_a_real_connection_with_4401(start_relay: StartRelay) -> None:
    relay = await start_relay(auth="jwt", jwt_secret=SECRET)
    now = int(time.time())
    short = token({"sub": "alice", "subs": ["*"], "pub": ["*"], "exp": now + 2})
    client = await Client.connect(relay.url, token=short)
    await client.sub("room.1")
    fresh = make_token(SECRET, "alice", ["*"], ["*"], ttl_s=600)
    await client.send({"op": "auth", "token": fresh, "id": "r"})
    refreshed = await client.expect("refreshed")
    assert refreshed["user"] == "alice" and refreshed["exp"] >= now + 500
    await client.close()
    doomed = await Client.connect(relay.url, token=short)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await doomed.recv(timeout=UNIT)  # nothing arrives until the token expires
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CloseCode.TOKEN_EXPIRED


# --- first-frame auth: connect without a token, send `auth` first ---------------------


def _admit_all(grant: Grant) -> BaseException | None:
    return None


def test_first_frame_auth_greets_only_after_a_good_auth_frame() -> None:
    world = World()
    world.grants["good"] = Grant(Principal(user="alice", sub_patterns=("room.*",)), None)
    admitted: list[str] = []

    def admit(grant: Grant) -> BaseException | None:
        admitted.append(grant.principal.user)
        return None

    peer = world.connect("", first_frame_auth=admit)
    world.tick()
    assert peer.frames() == [] and peer.session.subscriptions == set()  # nothing before auth
    peer.send({"op": "auth", "token": "good"})
    world.tick()
    welcome = peer.frames()[0]
    assert welcome["op"] == "welcome" and welcome["user"] == "alice" and admitted == ["alice"]
    assert welcome["inbox"] == {"ch": "@alice", "seq": 0}
    peer.send({"op": "sub", "ch": "room.1"})
    peer.send({"op": "sub", "ch": "news"})
    world.tick()
    assert [f["op"] for f in peer.frames()[1:]] == ["subscribed", "error"]  # its rights apply


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"op": "sub", "ch": "room.1"}, CloseCode.TOKEN_EXPIRED),  # another frame first
        ({"op": "auth", "token": "nonsense"}, CloseCode.TOKEN_EXPIRED),  # a bad token
        (b"{not json", CloseCode.TOKEN_EXPIRED),
    ],
)
def test_first_frame_auth_refusals_close_4401(first: dict[str, object] | bytes, code: int) -> None:
    world = World()
    peer = world.connect("", first_frame_auth=_admit_all)
    peer.send(first)
    world.tick()
    assert peer.closes and peer.closes[0][0] == code
    assert [f for f in peer.frames() if f["op"] == "welcome"] == []
    peer.send({"op": "pub", "ch": "room.1", "data": 1})  # read and dropped after the close
    assert world.router.counters.msgs_in == 0


def test_first_frame_auth_times_out_with_4401() -> None:
    world = World()
    peer = world.connect("", first_frame_auth=_admit_all)
    world.loop.advance(9.0)
    assert peer.closes == []
    world.loop.advance(1.5)
    assert peer.closes[0][0] == CloseCode.TOKEN_EXPIRED and "in time" in peer.closes[0][1]


def test_first_frame_auth_past_the_transports_limit_closes_1013() -> None:
    from core.errors import TryLater

    world = World()
    world.grants["good"] = Grant(Principal(user="alice"), None)
    peer = world.connect("", first_frame_auth=lambda grant: TryLater("too many"))
    peer.send({"op": "auth", "token": "good"})
    world.tick()
    assert peer.closes[0][0] == CloseCode.TRY_AGAIN_LATER


async def test_first_frame_auth_on_a_real_connection(start_relay: StartRelay) -> None:
    relay = await start_relay(
        auth="jwt", jwt_secret=SECRET, auth_timeout=0.5, max_connections_per_user=1
    )
    good = make_token(SECRET, "alice", ["*"], ["*"], ttl_s=600)
    async with websockets.connect(relay.url, open_timeout=UNIT) as ws:  # upgraded without a token
        await ws.send(json.dumps({"op": "auth", "token": good}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert welcome["op"] == "welcome" and welcome["user"] == "alice"
        await ws.send('{"op":"pub","ch":"room.1","data":1,"mid":"m-1"}')
        ack = json.loads(await asyncio.wait_for(ws.recv(), UNIT))
        assert ack == {"op": "ack", "ch": "room.1", "seq": 1}
        # the same user once more is one connection too many: 1013 once its token is known
        async with websockets.connect(relay.url, open_timeout=UNIT) as again:
            await again.send(json.dumps({"op": "auth", "token": good}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(again.recv(), UNIT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CloseCode.TRY_AGAIN_LATER
    reserved = make_token(SECRET, "admin", ["*"], ["*"], ttl_s=600)
    for first, code in (
        (json.dumps({"op": "auth", "token": reserved}), CloseCode.AUTH_FORBIDDEN),
        ('{"op":"ping"}', CloseCode.TOKEN_EXPIRED),
        (None, CloseCode.TOKEN_EXPIRED),  # nothing at all: FERRY_AUTH_TIMEOUT
    ):
        async with websockets.connect(relay.url, open_timeout=UNIT) as ws:
            if first is not None:
                await ws.send(first)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), UNIT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code, first
    # a bad token in the query is still refused at the upgrade (clients that read HTTP)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(relay.url + "?token=nonsense", open_timeout=UNIT)
    assert refused.value.response.status_code == 401
