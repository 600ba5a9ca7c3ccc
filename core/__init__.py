"""ferry's relay: WebSocket server (picows on uvloop), protocol v1, sessions, router,
auth, limits, HTTP endpoints, config and CLI. See docs/design.md and docs/protocol.md."""
