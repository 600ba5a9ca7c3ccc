"""Issue 17: the dashboard's flow view in a real browser against a real `ferry serve`.

- a publisher -> channel -> subscriber edge appears within 2 s of traffic starting;
- clicking the channel (on the canvas) lists its subscribers; clicking one of them shows
  the connection;
- a message picked from the channel's tail shows its timeline, every stage done (the
  database one once the replayer's checkpoint passes it); a screenshot for the docs
  (artifacts/flow.png; docs/img/flow.png too with FERRYTEST_UPDATE_DOCS=1);
- `$sys.flow` is asked for only while the tab is shown (the relay's own presence
  answer says who is subscribed to it);
- in a cluster of two nodes (NATS at 127.0.0.1:4222): the channels in one band per owner
  node with a legend, the crossing edges marked, the channel's owner in its details.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import shutil
import time
from typing import TYPE_CHECKING, Any

from cluster.slots import SlotMap
from tests.cluster.support import NATS_URL, require_nats
from tests.e2e.support import ADMIN, ARTIFACTS, Dashboard, LoopThread, ServeDashboard, Traffic
from tests.helpers import ROOT, UNIT, Client, http_get, wait_for_sync

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    expect = None  # type: ignore[assignment]

CHANNEL = "e2e.flow"
# The bound for an edge to show once traffic starts (the fixture's stats interval
# is 0.5 s, so two `$sys.flow` documents fit in it).
EDGE_WITHIN_S = 2.0
DOCS_IMAGE = ROOT / "docs" / "img" / "flow.png"


def _open_flow(page: Page, dash: Dashboard) -> None:
    dash.open()
    dash.save_settings(ADMIN)
    expect(dash.by("conn-state")).to_have_attribute("data-state", "connected")
    dash.by("tab-flow").click()
    expect(dash.by("flow-view")).to_be_visible()
    expect(dash.by("overview-view")).to_be_hidden()
    dash.wait("() => Number(document.body.dataset.flowCount || 0) >= 1", "a $sys.flow message")


def _click_node(page: Page, dash: Dashboard, node_id: str) -> None:
    """Click a graph node on the canvas, once the layout is at rest."""
    dash.wait("() => window.ferryFlow.settled()", "the graph layout to settle", timeout=UNIT * 4)
    pos: dict[str, float] | None = page.evaluate("id => window.ferryFlow.position(id)", node_id)
    assert pos is not None, f"{node_id} is not drawn"
    page.mouse.click(pos["x"], pos["y"])


ROOMS = ("room.lobby", "room.sales", "room.ops", "room.support")
PUBLISHERS = ("ana", "ben", "cy")


async def _scene(url: str) -> tuple[list[Client], list[asyncio.Task[None]]]:
    """Publishers at a few messages a second each on ROOMS, two subscribers per room."""
    clients: list[Client] = []
    for i, room in enumerate(ROOMS):
        for user in (f"viewer{i}", f"agent{i % 2}"):
            sub = await Client.connect(url, user=user)
            await sub.sub(room)
            clients.append(sub)

    async def publish(pub: Client, k: int) -> None:
        for n in itertools.count():
            await pub.pub(ROOMS[(n + k) % len(ROOMS)], {"n": n})
            await asyncio.sleep(0.05 * (k + 1))  # pacing: ~20, 10, 7 msgs/s

    async def drain(client: Client) -> None:
        async for _ in client.ws:
            pass

    tasks = []
    for k, user in enumerate(PUBLISHERS):
        pub = await Client.connect(url, user=user)
        clients.append(pub)
        tasks.append(asyncio.create_task(publish(pub, k)))
    tasks += [asyncio.create_task(drain(c)) for c in clients]
    return clients, tasks


async def _stop_scene(scene: tuple[list[Client], list[asyncio.Task[None]]]) -> None:
    clients, tasks = scene
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.close()


def test_edges_channel_subscribers_and_a_message_timeline(
    page: Page, serve: ServeDashboard, aio: LoopThread
) -> None:
    server = serve()
    dash = Dashboard(page, server)
    _open_flow(page, dash)

    traffic = Traffic(server.url, (CHANNEL,), 20.0)
    aio.run(traffic.start())
    started = time.monotonic()
    try:
        subscriber = traffic._clients[1].welcome["client"]
        edge_in = page.locator(
            f'[data-testid="flow-edge"][data-src="p:e2e-pub"][data-dst="c:{CHANNEL}"]'
        )
        edge_out = page.locator(
            f'[data-testid="flow-edge"][data-src="c:{CHANNEL}"][data-dst="s:{subscriber}"]'
        )
        expect(edge_in).to_have_count(1, timeout=EDGE_WITHIN_S * 1000)
        expect(edge_out).to_have_count(1, timeout=EDGE_WITHIN_S * 1000)
        print(f"\nflow edge shown {time.monotonic() - started:.2f} s after traffic started")

        # the channel, clicked on the canvas: its head and subscribers
        _click_node(page, dash, f"c:{CHANNEL}")
        expect(dash.by("detail-kind")).to_have_text("channel")
        expect(dash.by("detail-title")).to_have_text(CHANNEL)
        rows = dash.by("ch-subs").locator("tr")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-user", "e2e-sub")
        expect(rows.first).to_have_attribute("data-client", subscriber)
        expect(dash.by("ch-subscribers")).to_have_text("1 (1 users)")
        assert int(dash.by("ch-head").inner_text()) >= 1

        # one of its subscribers: the connection's details
        rows.first.click()
        expect(dash.by("detail-kind")).to_have_text("connection")
        expect(dash.by("conn-user")).to_have_text("e2e-sub")
        expect(dash.by("conn-channels")).to_contain_text(CHANNEL)
        expect(dash.by("conn-closed")).to_have_text("open")

        # back to the channel (its twin in the node list), then a message's life
        page.locator(f'[data-testid="flow-node"][data-id="c:{CHANNEL}"]').click()
        expect(dash.by("detail-kind")).to_have_text("channel")
        message = dash.by("tail-message").first
        expect(message).to_be_visible(timeout=UNIT * 2 * 1000)
        message.click()
        expect(dash.by("detail-kind")).to_have_text("message")
        stages = dash.by("timeline").locator("li")
        expect(stages).to_have_count(7)
        keys = [stages.nth(i).get_attribute("data-stage") for i in range(7)]
        assert keys == [
            "received", "appended", "written", "fsynced", "acked", "delivered", "logged",
        ]  # fmt: skip
        done = dash.by("timeline").locator('li[data-done="true"]')
        expect(done).to_have_count(7, timeout=UNIT * 4 * 1000)  # the database one last
        expect(stages.nth(5)).to_contain_text("delivered to 1 subscriber")

        # a busier scene for the screenshot: more publishers, channels and subscribers
        scene = aio.run(_scene(server.url))
        try:
            expect(page.locator('[data-testid="flow-node"][data-id^="c:room."]')).to_have_count(
                len(ROOMS), timeout=UNIT * 2 * 1000
            )
            dash.wait("() => window.ferryFlow.settled()", "the layout to settle", timeout=UNIT * 4)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "flow.png"))
        finally:
            aio.run(_stop_scene(scene))
        if os.environ.get("FERRYTEST_UPDATE_DOCS") == "1":
            DOCS_IMAGE.parent.mkdir(exist_ok=True)
            shutil.copyfile(ARTIFACTS / "flow.png", DOCS_IMAGE)
    finally:
        aio.run(traffic.stop())
    assert traffic.errors == []
    assert dash.errors.app_errors() == []


def test_the_flow_stream_is_asked_for_only_while_the_tab_is_shown(
    page: Page, serve: ServeDashboard, aio: LoopThread
) -> None:
    server = serve()
    dash = Dashboard(page, server)
    admin = aio.run(Client.connect(server.url, token=ADMIN))

    def flow_connections() -> int:
        async def ask() -> dict[str, Any]:
            await admin.send({"op": "presence", "ch": "$sys.flow"})
            while True:
                frame = await admin.recv()
                if frame["op"] == "presence":
                    return frame

        answer = aio.run(ask())
        count: int = answer["connections"]
        return count

    try:
        _open_flow(page, dash)
        assert flow_connections() == 1
        dash.by("tab-overview").click()
        expect(dash.by("overview-view")).to_be_visible()
        wait_for_sync(lambda: flow_connections() == 0, UNIT * 2, "the page to leave $sys.flow")
        dash.wait_stats(dash.stats_count() + 1)  # the overview goes on as before
    finally:
        aio.run(admin.close())
    assert dash.errors.app_errors() == []


def test_in_a_cluster_channels_are_grouped_by_owner_and_crossings_marked(
    page: Page, serve: ServeDashboard, aio: LoopThread
) -> None:
    require_nats()
    nodes = ("n1", "n2")
    cluster = {
        "FERRY_CLUSTER_NODES": ",".join(nodes),
        "FERRY_CLUSTER_ID": "t" + secrets.token_hex(6),
        "FERRY_NATS_URL": NATS_URL,
    }
    n1, n2 = (serve(FERRY_NODE_ID=node, FERRY_REPLAYER="false", **cluster) for node in nodes)

    def joined() -> bool:  # both: a forward to either finds a responder
        return all(http_get(s.http + "/readyz", timeout=1)[0] == 200 for s in (n1, n2))

    wait_for_sync(joined, UNIT * 2, "both nodes to join the cluster")
    slots = SlotMap(nodes)
    far, near = (
        next(f"room.{i}" for i in range(1000) if slots.owner_of(f"room.{i}") == node)
        for node in ("n2", "n1")
    )
    dash = Dashboard(page, n1)
    _open_flow(page, dash)
    traffic = Traffic(n1.url, (far, near), 20.0)
    aio.run(traffic.start())
    try:
        subscriber = traffic._clients[1].welcome["client"]

        def edge(src: str, dst: str) -> Locator:
            return page.locator(f'[data-testid="flow-edge"][data-src="{src}"][data-dst="{dst}"]')

        expect(edge("p:e2e-pub", "c:" + far)).to_have_attribute(
            "data-hop", "forward", timeout=UNIT * 2 * 1000
        )  # forwarded to n2
        expect(edge("c:" + far, "s:" + subscriber)).to_have_attribute("data-hop", "feed")
        expect(edge("p:e2e-pub", "c:" + near)).to_have_attribute("data-hop", "")
        legend = dash.by("legend-node")
        expect(dash.by("flow-legend")).to_be_visible()
        expect(legend).to_have_count(2)
        assert [legend.nth(i).get_attribute("data-owner") for i in range(2)] == ["n1", "n2"]
        far_node = page.locator(f'[data-testid="flow-node"][data-id="c:{far}"]')
        expect(far_node).to_have_attribute("data-owner", "n2")
        expect(page.locator(f'[data-testid="flow-node"][data-id="c:{near}"]')).to_have_attribute(
            "data-owner", "n1"
        )
        # on the canvas the far channel sits in the lower band (n2's), the near one above
        dash.wait("() => window.ferryFlow.settled()", "the layout to settle", timeout=UNIT * 4)
        at = {
            ch: page.evaluate("id => window.ferryFlow.position(id)", "c:" + ch)
            for ch in (far, near)
        }
        assert at[far] is not None and at[near] is not None
        assert at[far]["y"] > at[near]["y"], at
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "flow-cluster.png"))
        far_node.click()
        expect(dash.by("ch-owner")).to_have_text("n2 (another node)")
    finally:
        aio.run(traffic.stop())
    assert traffic.errors == []
    assert dash.errors.app_errors() == []
