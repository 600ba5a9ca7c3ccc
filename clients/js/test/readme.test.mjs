// The README's two tables are the code's tables.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { CLOSE_POLICY, TRANSITIONS } from "../dist/index.js";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const rows = (heading) => {
  const section = readme.split(`## ${heading}`)[1].split("\n## ")[0];
  return section.split("\n").filter((l) => /^\| (`|\d)/.test(l)).map((l) => l.split("|").slice(1, -1).map((c) => c.trim()));
};

test("the README's state table is TRANSITIONS", () => {
  const header = readme.split("## States")[1].split("\n").find((l) => l.startsWith("| state"));
  const events = header.split("|").slice(2, -1).map((c) => c.trim());
  const table = {};
  for (const [state, ...cells] of rows("States")) {
    table[state.replace(/`/g, "")] = Object.fromEntries(
      cells.map((c, i) => [events[i], c.replace(/`/g, "")]).filter(([, c]) => c),
    );
  }
  assert.deepEqual(table, TRANSITIONS);
});

test("the README's close-code table is CLOSE_POLICY", () => {
  const policy = (text) => (text.startsWith("terminal") ? "fatal" : text.startsWith("`getToken()`") ? "reauth" : "retry");
  const table = Object.fromEntries(rows("Close codes").map(([code, , what]) => [code, policy(what)]));
  assert.deepEqual(table, Object.fromEntries(Object.entries(CLOSE_POLICY)));
});
