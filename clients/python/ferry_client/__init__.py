"""ferry_client: the official asyncio client for ferry (docs/protocol.md).

from ferry_client import Client

async with Client("ws://localhost:8080/ws", token) as client:
    sub = await client.subscribe("room.1")
    ack = await client.publish("room.1", {"text": "hi"})   # ack.seq, ack.dup
    async for msg in sub:                                    # msg.ch .seq .ts .sender .data
        ...
"""

from ferry_client.client import Client, Subscription
from ferry_client.core import Config, Core, token_exp
from ferry_client.frames import Encoding
from ferry_client.machine import State
from ferry_client.policy import CLOSE_POLICY, HTTP_POLICY, Action, Backoff, Policy
from ferry_client.types import (
    Ack,
    ClientClosed,
    FerryError,
    Gap,
    Message,
    PayloadTooLarge,
    PublishQueueFull,
    PublishRejected,
    PublishTimeout,
    SubscribeError,
    SubscriptionEnded,
    TerminalError,
)

__all__ = [
    "CLOSE_POLICY",
    "HTTP_POLICY",
    "Ack",
    "Action",
    "Backoff",
    "Client",
    "ClientClosed",
    "Config",
    "Core",
    "Encoding",
    "FerryError",
    "Gap",
    "Message",
    "PayloadTooLarge",
    "Policy",
    "PublishQueueFull",
    "PublishRejected",
    "PublishTimeout",
    "State",
    "SubscribeError",
    "Subscription",
    "SubscriptionEnded",
    "TerminalError",
    "token_exp",
]
__version__ = "0.1.0"
