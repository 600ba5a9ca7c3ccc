"""ferry's relay: WebSocket server (picows on uvloop), protocol v1, sessions, router,
auth, limits, HTTP endpoints, config and CLI. See ../shared/DESIGN.md and docs/."""
