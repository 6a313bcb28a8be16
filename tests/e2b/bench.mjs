// p50 and p95 of one small call through E2B's SDK against hostd, beside
// the same through vesicle's own TypeScript and Python SDKs, on one hostd in
// one run (issue 18's benchmark): commands.run('echo hi') vs runCode('echo
// hi', bash), and code-interpreter runCode('1+1') vs runCode('1+1'). Not a
// test: run it by hand after building hostd and the TypeScript SDK (npm run
// build in sdk/typescript). Prints a table and writes the figures as JSON
// (default bench-e2b.json):
//
//   node tests/e2b/bench.mjs [iterations] [json path]
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { performance } from "node:perf_hooks";

import { locateHostd, startHostd } from "../../sdk/typescript/test/hostd_process.mjs";

const iterations = Number(process.argv[2] ?? 30);
const jsonPath = process.argv[3] ?? "bench-e2b.json";
const figures = {};
const hostd = await startHostd(locateHostd(), { maxSandboxes: 4 });
process.env.E2B_API_URL = hostd.url;
process.env.E2B_SANDBOX_URL = hostd.url;
process.env.E2B_API_KEY = hostd.key;
process.env.VESICLE_URL = hostd.url;
process.env.VESICLE_API_KEY = hostd.key;

function report(name, samples) {
  const ms = [...samples].sort((a, b) => a - b);
  const at = (q) => ms[Math.min(ms.length - 1, Math.floor(q * ms.length))];
  // The JSON key without the table's alignment.
  figures[name.replace(/ {2,}/g, " ")] = { p50_ms: +at(0.5).toFixed(1), p95_ms: +at(0.95).toFixed(1), n: ms.length };
  console.log(`${name.padEnd(60)} p50 ${at(0.5).toFixed(1).padStart(7)} ms   p95 ${at(0.95).toFixed(1).padStart(7)} ms   (n=${ms.length})`);
}

async function p50(name, call) {
  for (let i = 0; i < 3; i++) await call(); // warm up
  const ms = [];
  for (let i = 0; i < iterations; i++) {
    const started = performance.now();
    await call();
    ms.push(performance.now() - started);
  }
  report(name, ms);
}

try {
  const { Sandbox } = await import("e2b");
  const ci = await import("@e2b/code-interpreter");
  const vesicle = await import("../../sdk/typescript/dist/index.js");
  const slow = { requestTimeoutMs: 240_000 };

  const e2bSandbox = await Sandbox.create(slow);
  const ciSandbox = await ci.Sandbox.create(slow);
  const own = await vesicle.Sandbox.create();
  try {
    await p50("E2B SDK              commands.run('echo hi')", () => e2bSandbox.commands.run("echo hi"));
    await p50("vesicle TS SDK       runCode('echo hi', {language: 'bash'})", () => own.runCode("echo hi", { language: "bash" }));
    await p50("E2B SDK              code-interpreter runCode('1+1')", () => ciSandbox.runCode("1+1"));
    await p50("vesicle TS SDK       runCode('1+1')", () => own.runCode("1+1"));
    // The Python SDK's samples, from a child process against the same hostd.
    const python = JSON.parse(
      execFileSync("python3", [new URL("./bench_python.py", import.meta.url).pathname, hostd.url, hostd.key, String(iterations)], {
        encoding: "utf8",
      }),
    );
    for (const [name, samples] of Object.entries(python)) report(name, samples);
    writeFileSync(jsonPath, JSON.stringify({ iterations, loadavg_at_end: loadavg(), figures }, null, 2) + "\n");
    // Other work on the machine shows in the figures: say how much there was.
    console.log(`load average ${loadavg().map((l) => l.toFixed(1)).join(" ")}; figures written to ${jsonPath}`);
  } finally {
    await e2bSandbox.kill();
    await ciSandbox.kill();
    await own.close();
  }
} finally {
  const problems = await hostd.stop();
  if (problems.length > 0) console.error(problems.join("\n"));
}
