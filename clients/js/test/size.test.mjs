// The core must stay small: ≤ 6 KB once bundled, minified (esbuild) and gzipped.
import assert from "node:assert/strict";
import { test } from "node:test";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

const LIMIT = 6 * 1024;

test(`the core is at most ${LIMIT} bytes min+gzip`, async () => {
  const out = await build({
    entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
    bundle: true,
    minify: true,
    format: "esm",
    write: false,
  });
  const code = out.outputFiles[0].contents;
  const size = gzipSync(code, { level: 9 }).length;
  console.log(`ferry-client core: ${code.length} B minified, ${size} B min+gzip`);
  assert.ok(code.length > 1000, "the bundle holds the client");
  assert.ok(size <= LIMIT, `${size} B min+gzip > ${LIMIT}`);
});

test("the core bundles without @msgpack/msgpack (no runtime dependency)", async () => {
  const out = await build({
    entryPoints: [new URL("../dist/index.js", import.meta.url).pathname],
    bundle: true,
    format: "esm",
    write: false,
    metafile: true,
  });
  const inputs = Object.keys(out.metafile.inputs);
  assert.deepEqual(inputs.filter((p) => p.includes("node_modules")), []);
});
