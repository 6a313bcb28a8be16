// The SDK against a real hostd booting real VMs (TCG here), one hostd for
// the file and as few VM boots as the checks allow: one sandbox carries the
// REPL, file, fork, merge and freeze checks in turn, and the packaged SDK
// (npm pack, installed offline into a fresh folder) boots one more.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Readable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import {
  AuthenticationError,
  Client,
  ConflictError,
  NotFoundError,
  Sandbox,
  SandboxClosedError,
} from "../dist/index.js";
import { locateHostd, sleep, startHostd } from "./hostd_process.mjs";

const SDK = resolve(fileURLToPath(new URL("..", import.meta.url)));
const MEMORY_MIB = 512;
const located = locateHostd();

describe("against a real hostd", { skip: located.skip }, () => {
  let hostd;
  let opts;
  let sb; // the one sandbox the checks below share, in order
  const others = []; // every other sandbox made, closed at the end

  before(async () => {
    delete process.env.VESICLE_URL;
    delete process.env.VESICLE_API_KEY;
    hostd = await startHostd(located);
    opts = { url: hostd.url, apiKey: hostd.key };
  });

  after(async () => {
    for (const s of [sb, ...others]) {
      if (s === undefined) continue;
      try {
        await s.close();
      } catch {
        // best effort: stop() below reports what hostd could not clean up
      }
    }
    if (hostd !== undefined) {
      const problems = await hostd.stop();
      assert.deepEqual(problems, [], problems.join("\n"));
    }
  });

  async function value(sandbox, code) {
    const ex = await sandbox.runCode(code);
    assert.equal(ex.error, undefined, ex.error && ex.error.traceback);
    return ex.result;
  }

  it("creates a sandbox whose Python REPL keeps its globals", async () => {
    sb = await Sandbox.create({ ...opts, memoryMib: MEMORY_MIB });
    assert.match(sb.id, /^sb-[0-9a-f]{32}$/);
    assert.equal(sb.state, "ready");
    assert.equal(sb.info.memory_mib, MEMORY_MIB);
    await sb.runCode("x = 41");
    assert.equal(await value(sb, "x += 1; x"), "42");
    const listed = await Sandbox.list(opts);
    assert.deepEqual(listed.map((s) => s.id), [sb.id]);
  });

  it("streams stdout to onStdout while the cell runs", async () => {
    const arrivals = [];
    const started = Date.now();
    const ex = await sb.runCode(
      "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.5)",
      { onStdout: (chunk) => arrivals.push([Date.now(), chunk]) },
    );
    const finished = Date.now();
    assert.equal(ex.stdout, "tick 0\ntick 1\ntick 2\n");
    assert.equal(arrivals.map(([, c]) => c).join(""), ex.stdout);
    // The first line came while the cell still slept (a second before its end).
    assert.ok(finished - arrivals[0][0] >= 900, `first output ${finished - arrivals[0][0]} ms before the end`);
    assert.ok(arrivals[0][0] - started < finished - started);
  });

  it("runs bash with a non-zero exit, and reports a Python exception", async () => {
    const bash = await sb.runCode("echo out; echo err >&2; echo $GREETING in $(pwd); exit 3", {
      language: "bash",
      env: { GREETING: "hello" },
      cwd: "/tmp",
    });
    assert.equal(bash.exitCode, 3);
    assert.equal(bash.stdout, "out\nhello in /tmp\n");
    assert.equal(bash.stderr, "err\n");
    const failed = await sb.runCode("def f():\n    return 1 / 0\nf()");
    assert.equal(failed.error.name, "ZeroDivisionError");
    assert.equal(failed.error.value, "division by zero");
    assert.match(failed.error.traceback, /in f\b[\s\S]*ZeroDivisionError: division by zero/);
    assert.equal(failed.result, undefined);
    assert.deepEqual(failed.results, []);
  });

  it("interrupts a cell at its timeout, and refuses a fork while code runs (ConflictError)", async () => {
    const slow = sb.runCode("import time\ntime.sleep(30)", { timeoutMs: 3000 });
    await sleep(1000);
    await assert.rejects(sb.fork({ n: 1 }), (err) => {
      assert.ok(err instanceof ConflictError, `${err.name}: ${err.message}`);
      assert.equal(err.status, 409);
      return true;
    });
    const ex = await slow;
    assert.equal(ex.timedOut, true);
    assert.ok(ex.durationMs < 20_000, `the cell ran ${ex.durationMs} ms`);
    assert.equal(await value(sb, "x"), "42"); // an interrupt keeps the REPL's globals
  });

  it("moves 1 MiB of binary up and down, as bytes and as streams", async () => {
    const data = randomBytes(1 << 20);
    const sha = createHash("sha256").update(data).digest("hex");
    const written = await sb.files.write("/data/blob.bin", data);
    assert.deepEqual(written, { path: "/data/blob.bin", size: data.length });
    assert.equal(
      await value(sb, "import hashlib; hashlib.sha256(open('/data/blob.bin','rb').read()).hexdigest()"),
      `'${sha}'`,
    );
    assert.ok(Buffer.from(await sb.files.read("/data/blob.bin")).equals(data));

    // Streamed up in 64 KiB pieces, streamed down chunk by chunk.
    const pieces = [];
    for (let i = 0; i < data.length; i += 64 * 1024) pieces.push(data.subarray(i, i + 64 * 1024));
    await sb.files.write("/data/streamed.bin", Readable.from(pieces), { mode: 0o600 });
    assert.equal(await value(sb, "oct(__import__('os').stat('/data/streamed.bin').st_mode & 0o777)"), "'0o600'");
    const parts = [];
    for await (const chunk of await sb.files.readStream("/data/streamed.bin")) parts.push(chunk);
    assert.ok(Buffer.concat(parts).equals(data));

    await assert.rejects(sb.files.read("/data/missing.bin"), NotFoundError);
  });

  it("refuses a wrong key, and hides a sandbox from another key", async () => {
    await assert.rejects(Sandbox.list({ url: hostd.url, apiKey: "vsk_00000000000000000000000000000000" }), (err) => {
      assert.ok(err instanceof AuthenticationError, `${err.name}: ${err.message}`);
      assert.equal(err.status, 401);
      return true;
    });
    const other = { url: hostd.url, apiKey: hostd.otherKey };
    await assert.rejects(Sandbox.connect(sb.id, other), NotFoundError);
    assert.deepEqual(await Sandbox.list(other), []);
    assert.deepEqual(await new Client(other).spaces(), []);
  });

  it("forks 2 children that see the parent's variable and are independent, then merges one back", async () => {
    await sb.runCode("secret = 'abc'; n = 1");
    const kids = await sb.fork({ n: 2 });
    others.push(...kids);
    assert.equal(kids.length, 2);
    for (const kid of kids) {
      assert.notEqual(kid.id, sb.id);
      assert.equal(kid.forkedFrom, sb.id);
      assert.equal(await value(kid, "secret"), "'abc'");
    }
    await kids[0].runCode("n = 100");
    await kids[1].runCode("n = 200; open('/data/kid1.txt', 'w').write('from kid 1')");
    assert.equal(await value(sb, "n"), "1");
    assert.equal(await value(kids[0], "n"), "100");
    assert.equal(await value(kids[1], "n"), "200");

    await sb.mergeInto(kids[1]);
    assert.equal(kids[1].closed, true);
    assert.equal(await value(sb, "n"), "200");
    assert.equal(new TextDecoder().decode(await sb.files.read("/data/kid1.txt")), "from kid 1");
    await assert.rejects(Sandbox.connect(kids[1].id, opts), NotFoundError);
    assert.equal(await value(kids[0], "n"), "100"); // the other child is untouched
    await kids[0].close();
  });

  it("freezes into a Space and resumes where it stopped", async () => {
    await sb.runCode("frozen_value = n * 2");
    const spaceId = await sb.freeze();
    assert.match(spaceId, /^sp-[0-9a-f]{32}$/);
    assert.equal(sb.state, "frozen");
    assert.ok(sb.space.sizeBytes > 0);
    await assert.rejects(sb.runCode("1"), SandboxClosedError);
    assert.equal((await sb.refresh()).state, "frozen");
    assert.deepEqual((await Sandbox.spaces(opts)).map((s) => s.spaceId), [spaceId]);

    const resumed = await Sandbox.resume(spaceId, opts);
    others.push(resumed);
    assert.notEqual(resumed.id, sb.id);
    assert.equal(resumed.resumedFrom, spaceId);
    assert.equal(await value(resumed, "frozen_value"), "400");
    assert.equal(new TextDecoder().decode(await resumed.files.read("/data/kid1.txt")), "from kid 1");
    await assert.rejects(Sandbox.resume(spaceId, opts), NotFoundError); // a Space resumes once
    await resumed.close();
    await sb.close(); // only drops the frozen record
    assert.deepEqual(await Sandbox.list(opts), []);
  });

  it("packs into a tarball that installs offline into a fresh folder and works", async () => {
    const work = mkdtempSync(join(tmpdir(), "vesicle-ts-test-pack-"));
    try {
      const packed = await run("npm", ["pack", "--json", "--pack-destination", work], { cwd: SDK });
      const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("[\n")));
      const tarball = join(work, info.filename);
      const files = info.files.map((f) => f.path).sort();
      for (const want of ["dist/index.js", "dist/index.d.ts", "dist/sandbox.d.ts", "package.json", "README.md"]) {
        assert.ok(files.includes(want), `${want} is not in the tarball: ${files.join(", ")}`);
      }
      assert.ok(!files.some((f) => f.startsWith("src/") || f.startsWith("test/")), files.join(", "));

      const app = join(work, "app");
      mkdirSync(app);
      writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
      // Offline: no registry reachable, an empty npm cache.
      await run(
        "npm",
        ["install", tarball, "--offline", "--no-audit", "--no-fund", "--registry", "http://127.0.0.1:9/", "--cache", join(work, "npm-cache")],
        { cwd: app },
      );
      assert.ok(existsSync(join(app, "node_modules", "vesicle", "dist", "index.js")));
      const lock = JSON.parse(readFileSync(join(app, "package-lock.json"), "utf8"));
      assert.deepEqual(Object.keys(lock.packages).sort(), ["", "node_modules/vesicle"]); // no dependencies

      writeFileSync(
        join(app, "main.mjs"),
        `import { Sandbox, VERSION } from "vesicle";
const sb = await Sandbox.create({ memoryMib: ${MEMORY_MIB} });
try {
  const ex = await sb.runCode("print(6 * 7)");
  await sb.files.write("/tmp/hello.txt", "from the tarball");
  const text = await sb.files.readText("/tmp/hello.txt");
  const where = import.meta.resolve ? import.meta.resolve("vesicle") : "";
  console.log(JSON.stringify({ version: VERSION, stdout: ex.stdout, text, where }));
} finally {
  await sb.close();
}
`,
      );
      const out = await run("node", ["main.mjs"], {
        cwd: app,
        env: { ...process.env, VESICLE_URL: hostd.url, VESICLE_API_KEY: hostd.key },
      });
      const got = JSON.parse(out.stdout.trim().split("\n").at(-1));
      assert.equal(got.stdout, "42\n");
      assert.equal(got.text, "from the tarball");
      assert.equal(got.version, JSON.parse(readFileSync(join(SDK, "package.json"), "utf8")).version);
      if (got.where) assert.ok(got.where.startsWith(`file://${app}/node_modules/vesicle/`), got.where);

      // The declarations in the tarball type-check a TypeScript user's code.
      writeFileSync(
        join(app, "main.ts"),
        `import { Sandbox, NotFoundError, type Execution, type Result } from "vesicle";
export async function use(): Promise<number> {
  const sb: Sandbox = await Sandbox.create({ memoryMib: 512, egressAllow: ["pypi.org"] });
  const ex: Execution = await sb.runCode("1", { language: "bash", onStdout: (s: string) => s.length });
  const first: Result | undefined = ex.results[0];
  const png: Uint8Array | undefined = first?.png;
  const bytes: Uint8Array = await sb.files.read("/x");
  const kids: Sandbox[] = await sb.fork({ n: 2 });
  // @ts-expect-error: an unknown option is a type error
  await Sandbox.create({ memoryMB: 512 });
  // @ts-expect-error: only python and bash
  await sb.runCode("1", { language: "ruby" });
  try { await sb.close(); } catch (e) { if (e instanceof NotFoundError) return e.status ?? 0; }
  return (png?.length ?? 0) + bytes.length + kids.length + ex.exitCode;
}
`,
      );
      // So do the READMEs' TypeScript examples.
      const examples = readmeExamples();
      assert.ok(examples.every((code) => code.includes("Sandbox")), "each README has TypeScript examples");
      examples.forEach((code, i) => writeFileSync(join(app, `readme_${i}.ts`), code + "\nexport {};\n"));
      await run(
        "node",
        [
          join(SDK, "node_modules", "typescript", "bin", "tsc"),
          "--noEmit", "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution", "nodenext",
          "--types", "node", "--typeRoots", join(SDK, "node_modules", "@types"),
          "main.ts", ...examples.map((_, i) => `readme_${i}.ts`),
        ],
        { cwd: app },
      );
      assert.deepEqual(await Sandbox.list(opts), []); // the script closed its sandbox
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

// The ```ts blocks of the repository's README and the SDK's: one program
// per README, its blocks in order (a later block uses what an earlier declared).
function readmeExamples() {
  return [join(SDK, "..", "..", "README.md"), join(SDK, "README.md")].map((path) =>
    [...readFileSync(path, "utf8").matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1]).join("\n"),
  );
}

// Asynchronous, so the event loop (and the SDK's kept-alive connections) runs meanwhile.
async function run(command, args, options = {}) {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 300_000);
  const [code, signal] = await once(child, "close");
  clearTimeout(timer);
  assert.equal(code, 0, `${command} ${args.join(" ")} failed (${code ?? signal}):\n${stdout}\n${stderr}`);
  return { stdout, stderr };
}
