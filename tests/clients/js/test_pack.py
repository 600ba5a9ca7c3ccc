"""The npm package as users get it: `npm pack`, installed offline from the tarball into a
fresh project, imported as ESM (both entry points), and type-checked by `tsc` in an example
that uses the types (with no DOM library: the types must stand on their own in Node)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from tests.clients.js.node import CLIENT, node_binary
from tests.helpers import UNIT, unavailable

EXAMPLE = """\
import { Ferry, FerryError, CLOSE_POLICY, type Gap, type Message, type PublishResult } from "ferry-client";
import { msgpack } from "ferry-client/msgpack";

declare function log(...values: unknown[]): void; // no DOM and no @types/node here
const ferry = new Ferry("ws://127.0.0.1:8080/ws", {
  getToken: async () => "jwt",
  codec: msgpack,
  onState: (state, info) => log(state, info.attempt),
});
const sub = ferry.subscribe<{ text: string }>("room.1", {
  onMessage: (m: Message<{ text: string }>) => log(m.seq, m.data.text.length),
  onGap: (g: Gap) => log(g.from, g.to, g.reason),
  since: 41,
});
export async function main(): Promise<number> {
  await ferry.connect();
  await sub.ready();
  const r: PublishResult = await ferry.publish("room.1", { text: "hi" }, { timeoutMs: 5000 });
  const terminal: boolean = CLOSE_POLICY[4403] === "fatal";
  await ferry.close();
  return r.seq + (r.dup ? 1 : 0) + (terminal ? 0 : 1) + (new FerryError("x").code.length);
}
"""

# A misuse the types must catch (else the check above proves little).
BAD = """\
import { Ferry } from "ferry-client";
const ferry = new Ferry("ws://x");
ferry.publish(42, "not a channel");
"""

TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "module": "NodeNext",
        "moduleResolution": "NodeNext",
        "lib": ["ES2022"],
        "types": [],
        "strict": True,
        "noEmit": True,
    },
}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=UNIT * 12)


def test_the_tarball_installs_offline_imports_and_type_checks(tmp_path: Path) -> None:
    node = node_binary()
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm is not installed")
    packed = run([npm, "pack", "--pack-destination", str(tmp_path), "--json"], CLIENT)
    assert packed.returncode == 0, packed.stderr
    info = json.loads(packed.stdout)[0]
    tarball = tmp_path / info["filename"]
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"package/dist/index.js", "package/dist/index.d.ts", "package/dist/msgpack.js",
            "package/README.md", "package/package.json"} <= names, names  # fmt: skip
    assert not any("/src/" in n or "/test/" in n or "node_modules" in n for n in names), names

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "app", "private": True, "type": "module"})
    )
    installed = run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", str(tarball)],
        app,
    )
    assert installed.returncode == 0, installed.stderr
    deps = json.loads((app / "package.json").read_text())["dependencies"]
    assert list(deps) == ["ferry-client"]
    assert sorted(
        p.name for p in (app / "node_modules").iterdir() if not p.name.startswith(".")
    ) == ["ferry-client"], "the core pulls in no runtime dependency"

    (app / "main.mjs").write_text(
        'import { Ferry, TRANSITIONS, closePolicy } from "ferry-client";\n'
        "const f = new Ferry('ws://127.0.0.1:1/ws');\n"
        "console.log(JSON.stringify({ state: f.state, fatal: closePolicy(4403),"
        " states: Object.keys(TRANSITIONS).length }));\n"
    )
    imported = run([node, "main.mjs"], app)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout) == {"state": "idle", "fatal": "fatal", "states": 6}

    # the msgpack entry point needs its optional peer: absent, the import says so
    missing = run([node, "-e", 'import("ferry-client/msgpack").then(() => process.exit(3))'], app)
    assert missing.returncode == 1 and "@msgpack/msgpack" in missing.stderr, missing.stderr

    # types: the example type-checks (msgpack's types resolve without the peer: it is a
    # `Codec`), the misuse does not
    tsc = CLIENT / "node_modules" / ".bin" / "tsc"
    (app / "tsconfig.json").write_text(json.dumps({**TSCONFIG, "files": ["example.ts"]}))
    (app / "example.ts").write_text(EXAMPLE)
    checked = run([str(tsc), "-p", "tsconfig.json"], app)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (app / "tsconfig.json").write_text(json.dumps({**TSCONFIG, "files": ["bad.ts"]}))
    (app / "bad.ts").write_text(BAD)
    rejected = run([str(tsc), "-p", "tsconfig.json"], app)
    assert rejected.returncode != 0 and "bad.ts" in rejected.stdout, rejected.stdout
