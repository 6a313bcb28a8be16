// The unmodified E2B SDKs from npm (e2b@2.51.0, e2b@2.50.0 as "e2b-2.50",
// @e2b/code-interpreter@2.8.0) against a real hostd with real VMs, set up
// the way a user switching over would: only E2B_API_URL and E2B_SANDBOX_URL
// (hostd's URL) and E2B_API_KEY (a vesicle key). What maps to what is in
// the README's "E2B compatibility".
//
// hostd comes from sdk/typescript/test/hostd_process.mjs (its own temp dirs
// and keys; stop() reports any VM or file left behind).

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { locateHostd, startHostd } from "../../sdk/typescript/test/hostd_process.mjs";
import { ALLOWED_IP, DENIED_IP, RESOLVER_IP, TestInternet, unavailable, WAN_GATEWAY } from "./testnet.mjs";

const located = locateHostd();
let hostd;
// Imported once the environment points at hostd (the SDKs read it when a
// sandbox or connection is made, but be safe).
let e2b, e2b250, ci;
// hostd's sandbox_domain: getHost(port) is "<port>-<id>.<DOMAIN>".
const DOMAIN = "sbx.test";

before(async () => {
  if (located.skip) return;
  hostd = await startHostd(located, {
    maxSandboxes: 4,
    extraConfig: `disable_pools: true\nsandbox_domain: "${DOMAIN}"\n`,
  });
  delete process.env.E2B_DEBUG;
  delete process.env.E2B_DOMAIN;
  process.env.E2B_API_URL = hostd.url;
  process.env.E2B_SANDBOX_URL = hostd.url;
  process.env.E2B_API_KEY = hostd.key;
  e2b = await import("e2b");
  e2b250 = await import("e2b-2.50");
  ci = await import("@e2b/code-interpreter");
});

after(async () => {
  if (!hostd) return;
  const problems = await hostd.stop();
  assert.deepEqual(problems, [], "hostd left something behind");
});

const skip = located.skip;
// Creates, pauses and resumes wait for a VM under TCG.
const SLOW = { requestTimeoutMs: 240_000 };

describe("e2b@2.51.0", { skip }, () => {
  let sbx;

  test("create", async () => {
    // 2.51 sends lifecycle as autoPause: false, autoResume: {enabled: false}.
    sbx = await e2b.Sandbox.create({
      ...SLOW,
      timeoutMs: 600_000,
      metadata: { suite: "e2b" },
      lifecycle: { onTimeout: "kill", autoResume: false },
    });
    assert.match(sbx.sandboxId, /^[0-9a-f]{32}$/);
    // Traffic does not wake a paused sandbox here: refused by name.
    await assert.rejects(e2b.Sandbox.create({ lifecycle: { onTimeout: "pause", autoResume: true } }), (e) => {
      assert.ok(e instanceof e2b.SandboxError && e.statusCode === 400, `${e?.constructor?.name}: ${e?.message}`);
      assert.match(e.message, /autoResume: not supported/);
      return true;
    });
  });

  test("commands: run, output, envs, cwd", async () => {
    const run = await sbx.commands.run("echo hello; echo oops >&2");
    assert.equal(run.exitCode, 0);
    assert.equal(run.stdout, "hello\n");
    assert.equal(run.stderr, "oops\n");
    const env = await sbx.commands.run('echo "$FOO"; pwd', { envs: { FOO: "bar baz" }, cwd: "/tmp" });
    assert.equal(env.stdout, "bar baz\n/tmp\n");
  });

  test("commands: stream callbacks get output as it comes", async () => {
    const out = [];
    const err = [];
    const run = await sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.3; done; echo done >&2", {
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    });
    assert.equal(out.join(""), "1\n2\n3\n");
    assert.ok(out.length >= 2, `stdout came in ${out.length} piece(s), not streamed`);
    assert.deepEqual(err, ["done\n"]);
    assert.equal(run.stdout, "1\n2\n3\n");
  });

  test("commands: a non-zero exit raises CommandExitError", async () => {
    await assert.rejects(sbx.commands.run("echo bad >&2; exit 3"), (e) => {
      assert.ok(e instanceof e2b.CommandExitError, `${e?.constructor?.name}: ${e?.message}`);
      assert.equal(e.exitCode, 3);
      assert.equal(e.stderr, "bad\n");
      return true;
    });
  });

  test("commands: background, list, connect, kill", async () => {
    const cmd = "sleep 2; echo late; sleep 300";
    const handle = await sbx.commands.run(cmd, { background: true });
    assert.ok(handle.pid > 1);
    const listed = await sbx.commands.list();
    const mine = listed.find((p) => p.pid === handle.pid);
    assert.ok(mine, `pid ${handle.pid} not in ${JSON.stringify(listed)}`);
    assert.equal(mine.cmd, "/bin/bash");
    assert.deepEqual(mine.args, ["-l", "-c", cmd]);

    // A second reader of the same command's output.
    const seen = [];
    const attached = await sbx.commands.connect(handle.pid, { onStdout: (d) => seen.push(d) });
    assert.equal(attached.pid, handle.pid);
    for (let waited = 0; !seen.join("").includes("late\n") && waited < 20_000; waited += 100) await sleep(100);
    assert.equal(seen.join(""), "late\n");

    assert.equal(await sbx.commands.kill(handle.pid), true);
    for (const h of [handle, attached]) {
      await assert.rejects(h.wait(), (e) => {
        assert.ok(e instanceof e2b.CommandExitError, `${e?.constructor?.name}: ${e?.message}`);
        assert.equal(e.exitCode, -1);
        assert.match(e.error, /killed/);
        return true;
      });
    }
    assert.equal(handle.stdout, "late\n");
    const later = await sbx.commands.list();
    assert.ok(!later.some((p) => p.pid === handle.pid));
    assert.equal(await sbx.commands.kill(handle.pid), false);
  });

  test("commands: stdin (sendStdin, then closeStdin is EOF)", async () => {
    const handle = await sbx.commands.run("cat; echo done", { background: true, stdin: true });
    await sbx.commands.sendStdin(handle.pid, "hello ");
    await handle.sendStdin(new TextEncoder().encode("stdin\n"));
    assert.ok((await sbx.commands.list()).some((p) => p.pid === handle.pid), "cat ended before stdin was closed");
    await handle.closeStdin();
    const result = await handle.wait();
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, "hello stdin\ndone\n");

    // Bytes of every value, in more than one piece (hostd writes 16 KiB at
    // a time), checked where they landed.
    const bytes = Buffer.from(Array.from({ length: 40_000 }, (_, i) => (i * 7) % 256));
    const sink = await sbx.commands.run("cat > /tmp/stdin.bin", { background: true, stdin: true });
    await sink.sendStdin(new Uint8Array(bytes));
    await sink.closeStdin();
    assert.equal((await sink.wait()).exitCode, 0);
    const back = await sbx.files.read("/tmp/stdin.bin", { format: "bytes" });
    assert.ok(Buffer.from(back).equals(bytes), `stdin came through as ${back.length} bytes`);

    // Without stdin: true a command's stdin is closed.
    const plain = await sbx.commands.run("sleep 30", { background: true });
    await assert.rejects(sbx.commands.sendStdin(plain.pid, "x"), /started without stdin/);
    await plain.kill();
  });

  test("pty: refused as unimplemented, and hostd lives on", async () => {
    // A refused stream once crashed hostd (E2B's own pty tests found it).
    await assert.rejects(sbx.pty.create({ cols: 80, rows: 24, onData: () => {} }), (e) => {
      assert.ok(e instanceof e2b.SandboxError, `${e?.constructor?.name}: ${e?.message}`);
      assert.match(e.message, /unimplemented.*no PTY/);
      return true;
    });
    assert.equal((await sbx.commands.run("echo alive")).stdout, "alive\n");
  });

  test("files: text, 1 MiB binary, list, exists, makeDir, rename, remove, getInfo", async () => {
    const written = await sbx.files.write("/tmp/e2b/hello.txt", "hi there");
    assert.equal(written.path, "/tmp/e2b/hello.txt");
    assert.equal(await sbx.files.read("/tmp/e2b/hello.txt"), "hi there");

    const blob = randomBytes(1 << 20);
    await sbx.files.write("/tmp/e2b/blob.bin", blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.length));
    const back = await sbx.files.read("/tmp/e2b/blob.bin", { format: "bytes" });
    assert.ok(Buffer.from(back).equals(blob), "the 1 MiB file came back different");

    const entries = await sbx.files.list("/tmp/e2b");
    // In path order, as envd lists.
    assert.deepEqual(entries.map((e) => [e.name, e.type, e.path]), [
      ["blob.bin", "file", "/tmp/e2b/blob.bin"],
      ["hello.txt", "file", "/tmp/e2b/hello.txt"],
    ]);
    assert.equal(entries.find((e) => e.name === "blob.bin").size, 1 << 20);

    assert.equal(await sbx.files.exists("/tmp/e2b/hello.txt"), true);
    assert.equal(await sbx.files.exists("/tmp/e2b/nope.txt"), false);
    assert.equal(await sbx.files.makeDir("/tmp/e2b/sub"), true);
    assert.equal(await sbx.files.makeDir("/tmp/e2b/sub"), false);

    const moved = await sbx.files.rename("/tmp/e2b/hello.txt", "/tmp/e2b/sub/renamed.txt");
    assert.equal(moved.path, "/tmp/e2b/sub/renamed.txt");
    const info = await sbx.files.getInfo("/tmp/e2b/sub/renamed.txt");
    assert.equal(info.name, "renamed.txt");
    assert.equal(info.type, "file");
    assert.equal(info.size, 8);
    assert.equal(info.permissions, "-rw-r--r--");
    assert.ok(info.modifiedTime instanceof Date && Math.abs(info.modifiedTime - Date.now()) < 600_000);
    assert.equal((await sbx.files.getInfo("/tmp/e2b/sub")).type, "dir");

    await sbx.files.remove("/tmp/e2b/sub");
    assert.equal(await sbx.files.exists("/tmp/e2b/sub/renamed.txt"), false);
    // As envd: removing what is not there succeeds; a relative symlink's
    // target comes back absolute.
    await sbx.files.remove("/tmp/e2b/sub");
    await sbx.commands.run("ln -s blob.bin /tmp/e2b/link");
    assert.equal((await sbx.files.getInfo("/tmp/e2b/link")).symlinkTarget, "/tmp/e2b/blob.bin");
    await sbx.files.remove("/tmp/e2b/link");
    await assert.rejects(sbx.files.read("/tmp/e2b/sub/renamed.txt"), e2b.FileNotFoundError);
    await assert.rejects(sbx.files.getInfo("/tmp/e2b/sub"), e2b.FileNotFoundError);
  });

  test("fork: children see the parent's files and are independent", async () => {
    await sbx.files.write("/tmp/fork/before.txt", "parent");
    const children = await sbx.fork({ count: 2, ...SLOW });
    assert.equal(children.length, 2);
    try {
      for (const child of children) assert.ok(child instanceof e2b.Sandbox, String(child));
      const [a, b] = children;
      assert.notEqual(a.sandboxId, b.sandboxId);
      assert.equal(await a.files.read("/tmp/fork/before.txt"), "parent");
      assert.equal(await b.files.read("/tmp/fork/before.txt"), "parent");
      await a.files.write("/tmp/fork/before.txt", "child a");
      assert.equal(await b.files.read("/tmp/fork/before.txt"), "parent");
      assert.equal(await sbx.files.read("/tmp/fork/before.txt"), "parent");
    } finally {
      for (const child of children) if (child instanceof e2b.Sandbox) await child.kill();
    }
  });

  test("snapshot: sandboxes made from it see its files and Python globals; other keys cannot", async () => {
    await sbx.files.write("/root/snap.txt", "from the snapshot");
    const interpreter = await ci.Sandbox.connect(sbx.sandboxId, SLOW);
    await interpreter.runCode("snap_global = 41");
    const snap = await sbx.createSnapshot(SLOW);
    assert.match(snap.snapshotId, /^snapshot-[0-9a-f]+$/);
    // The sandbox runs on; what it does next is not in the snapshot.
    await sbx.files.write("/root/snap.txt", "after the snapshot");
    const mine = await e2b.Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems();
    assert.deepEqual(mine.map((s) => s.snapshotId), [snap.snapshotId]);

    // Reusable: two sandboxes from the one snapshot, each its own.
    const a = await ci.Sandbox.create(snap.snapshotId, { ...SLOW, timeoutMs: 300_000 });
    try {
      const b = await e2b.Sandbox.create(snap.snapshotId, { ...SLOW, timeoutMs: 300_000 });
      try {
        assert.equal((await a.getInfo()).templateId, snap.snapshotId);
        assert.equal((await a.runCode("snap_global + 1")).text, "42");
        assert.equal(await a.files.read("/root/snap.txt"), "from the snapshot");
        assert.equal(await b.files.read("/root/snap.txt"), "from the snapshot");
        await b.files.write("/root/snap.txt", "b's own");
        assert.equal(await a.files.read("/root/snap.txt"), "from the snapshot");
      } finally {
        await b.kill();
      }
    } finally {
      await a.kill();
    }

    // Another key neither sees nor uses nor deletes it.
    const other = { apiKey: hostd.otherKey };
    await assert.rejects(e2b.Sandbox.create(snap.snapshotId, { ...other, ...SLOW }), (e) => {
      assert.ok(e instanceof e2b.SandboxError && e.statusCode === 404, `${e?.constructor?.name}: ${e?.message}`);
      assert.match(e.message, /no template "snapshot-[0-9a-f]+" for this key/);
      return true;
    });
    assert.deepEqual(await e2b.Sandbox.listSnapshots(other).nextItems(), []);
    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId, other), false);

    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId), true);
    assert.equal(await e2b.Sandbox.deleteSnapshot(snap.snapshotId), false);
    assert.deepEqual(await e2b.Sandbox.listSnapshots().nextItems(), []);
  });

  test("getInfo, setTimeout, list", async () => {
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, "base");
    assert.equal(info.state, "running");
    assert.deepEqual(info.metadata, { suite: "e2b" });
    assert.ok(info.cpuCount >= 1 && info.memoryMB >= 128);

    await sbx.setTimeout(120_000);
    const endAt = (await sbx.getInfo()).endAt.getTime();
    assert.ok(Math.abs(endAt - (Date.now() + 120_000)) < 15_000, `endAt ${new Date(endAt).toISOString()}`);

    const page = await e2b.Sandbox.list({ query: { metadata: { suite: "e2b" } } }).nextItems();
    assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId]);
    const none = await e2b.Sandbox.list({ query: { metadata: { suite: "other" } } }).nextItems();
    assert.deepEqual(none, []);
  });

  test("connect, then pause and connect: state kept", async () => {
    const same = await e2b.Sandbox.connect(sbx.sandboxId, SLOW);
    assert.equal((await same.commands.run("echo kept > /tmp/state; cat /tmp/state")).stdout, "kept\n");

    assert.equal(await sbx.pause(SLOW), true);
    assert.equal((await e2b.Sandbox.getInfo(sbx.sandboxId)).state, "paused");
    assert.equal(await e2b.Sandbox.pause(sbx.sandboxId, SLOW), false, "a second pause is a 409");
    const paused = await e2b.Sandbox.list({ query: { state: ["paused"] } }).nextItems();
    assert.ok(paused.some((s) => s.sandboxId === sbx.sandboxId));

    const resumed = await e2b.Sandbox.connect(sbx.sandboxId, SLOW);
    assert.equal(resumed.sandboxId, sbx.sandboxId);
    assert.equal((await e2b.Sandbox.getInfo(sbx.sandboxId)).state, "running");
    assert.equal(await resumed.files.read("/tmp/state"), "kept\n");
    sbx = resumed;
  });

  test("kill, then not found; a command running then fails as on E2B", async () => {
    const running = await sbx.commands.run("sleep 60", { background: true });
    await sbx.kill();
    // Its stream is cut as a dead VM's would be; the SDK's health check
    // then tells it the sandbox is gone.
    await assert.rejects(running.wait(), (e) => {
      assert.ok(e instanceof e2b.TimeoutError, `${e?.constructor?.name}: ${e?.message}`);
      assert.match(e.message, /killed or reached its end of life/);
      return true;
    });
    await assert.rejects(e2b.Sandbox.getInfo(sbx.sandboxId), e2b.NotFoundError);
    assert.equal(await e2b.Sandbox.kill(sbx.sandboxId), false);
    await assert.rejects(sbx.commands.run("true"));
  });
});

describe("e2b@2.50.0, keys and tokens", { skip }, () => {
  test("create (POST /sandboxes), envVars, run, files, connect", async () => {
    const sbx = await e2b250.Sandbox.create({ ...SLOW, timeoutMs: 300_000, envs: { FROM_CREATE: "yes" } });
    try {
      assert.equal((await sbx.commands.run('echo $((6*7)) "$FROM_CREATE"')).stdout, "42 yes\n");
      await sbx.files.write("/tmp/old-sdk.txt", "from 2.50");
      const again = await e2b250.Sandbox.connect(sbx.sandboxId, SLOW);
      assert.equal(await again.files.read("/tmp/old-sdk.txt"), "from 2.50");

      // Keys: a wrong one is an AuthenticationError, another key's sandbox
      // does not exist for it.
      await assert.rejects(e2b.Sandbox.create({ apiKey: "vsk_not_a_key" }), e2b.AuthenticationError);
      await assert.rejects(e2b.Sandbox.list({ apiKey: "vsk_not_a_key" }).nextItems(), e2b.AuthenticationError);
      // Newer SDKs accept only keys spelled "e2b_<hex>": the same key so spelled.
      const e2bSpelled = { apiKey: hostd.key.replace(/^vsk_/, "e2b_") };
      assert.deepEqual((await e2b.Sandbox.list(e2bSpelled).nextItems()).map((s) => s.sandboxId), [sbx.sandboxId]);
      assert.equal((await e2b.Sandbox.getInfo(sbx.sandboxId, e2bSpelled)).sandboxId, sbx.sandboxId);
      await assert.rejects(e2b.Sandbox.list({ apiKey: `e2b_${"0".repeat(64)}` }).nextItems(), e2b.AuthenticationError);
      const other = { apiKey: hostd.otherKey };
      await assert.rejects(e2b.Sandbox.getInfo(sbx.sandboxId, other), e2b.NotFoundError);
      await assert.rejects(e2b.Sandbox.connect(sbx.sandboxId, other), e2b.NotFoundError);
      assert.equal(await e2b.Sandbox.kill(sbx.sandboxId, other), false);
      assert.deepEqual(await e2b.Sandbox.list(other).nextItems(), []);

      // envd traffic needs the sandbox's own access token.
      const health = (token) =>
        fetch(`${hostd.url}/health`, {
          headers: { "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": "49983", "X-Access-Token": token },
        });
      assert.equal((await health(sbx.envdAccessToken)).status, 204);
      assert.equal((await health("0".repeat(64))).status, 401);

      // The E2B timeout ends the sandbox.
      await sbx.setTimeout(1000);
      let gone = false;
      for (let waited = 0; !gone && waited < 30_000; waited += 500) {
        await sleep(500);
        gone = await e2b250.Sandbox.getInfo(sbx.sandboxId).then(() => false, (e) => e instanceof e2b250.NotFoundError);
      }
      assert.ok(gone, "the sandbox outlived its timeout");
    } finally {
      await sbx.kill();
    }
  });
});

describe("@e2b/code-interpreter@2.8.0", { skip }, () => {
  test("runCode: globals, results, stdout, errors, bash, contexts", async () => {
    const sbx = await ci.Sandbox.create({ ...SLOW, timeoutMs: 300_000 });
    try {
      await sbx.runCode("x = 41");
      assert.equal((await sbx.runCode("x+1")).text, "42");

      const printed = await sbx.runCode('print("hi")\nprint("there", flush=True)');
      assert.equal(printed.logs.stdout.join(""), "hi\nthere\n");
      assert.equal(printed.text, undefined);

      const failed = await sbx.runCode("1/0");
      assert.equal(failed.error.name, "ZeroDivisionError");
      assert.match(failed.error.value, /division by zero/);
      assert.match(failed.error.traceback, /ZeroDivisionError/);

      const bash = await sbx.runCode("echo $((2+3))", { language: "bash" });
      assert.deepEqual(bash.logs.stdout, ["5\n"]);

      const context = await sbx.createCodeContext();
      assert.equal(context.language, "python");
      await sbx.runCode("x = 1", { context });
      assert.equal((await sbx.runCode("x+1", { context })).text, "2");
      assert.equal((await sbx.runCode("x+1")).text, "42", "the default context kept its own x");
      const listed = await sbx.listCodeContexts();
      assert.ok(listed.some((c) => c.id === context.id));
      await sbx.removeCodeContext(context);
      assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === context.id));
    } finally {
      await sbx.kill();
    }
  });
});

// One request to hostd with exactly these headers (Host included), on a
// fresh connection; the answer read whole.
function rawRequest({ method = "GET", path = "/", headers = {}, body } = {}) {
  const url = new URL(hostd.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, method, path, headers, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (Array.isArray(body)) for (const piece of body) req.write(piece);
    else if (body) req.write(body);
    req.end();
  });
}

const sha256 = (data) => createHash("sha256").update(data).digest("hex");

describe("ports inside a sandbox (e2b@2.51.0, egress off)", { skip }, () => {
  let sbx;
  const PORT = 8000;
  const byHeaders = () => ({ "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": String(PORT) });

  test("a server in a sandbox without internet access", async () => {
    sbx = await e2b.Sandbox.create({ ...SLOW, timeoutMs: 600_000, allowInternetAccess: false });
    await sbx.files.write("/tmp/port_server.py", readFileSync(new URL("./port_server.py", import.meta.url), "utf8"));
    await sbx.commands.run(`python3 /tmp/port_server.py ${PORT}`, { background: true });
    const probe = `import socket,time
for _ in range(300):
    try: socket.create_connection(("127.0.0.1", ${PORT})); break
    except OSError: time.sleep(0.1)
else: raise SystemExit("the server did not start")`;
    await sbx.files.write("/tmp/probe.py", probe);
    await sbx.commands.run("python3 /tmp/probe.py");
    // The guest has no way out; the server is reached through hostd alone.
    const out = await sbx.commands.run("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=2)\" || echo unreachable");
    assert.match(out.stdout, /unreachable/);
  });

  test("getHost(port) and E2B's headers with the access token", async () => {
    assert.equal(sbx.getHost(PORT), `${PORT}-${sbx.sandboxId}.${DOMAIN}`);
    const res = await rawRequest({ path: "/hello?x=1", headers: { ...byHeaders(), "X-Access-Token": sbx.envdAccessToken } });
    assert.equal(res.status, 200, res.body.toString());
    // The credentials hostd took the request on are not passed on.
    assert.match(res.body.toString(), /^hello \/hello\?x=1 host=.* auth=none$/);
    assert.equal(res.headers.connection, "close");
  });

  test("the host-name form with the traffic access token; 1 MiB out, 3 MiB chunked in", async () => {
    const headers = { host: sbx.getHost(PORT), "e2b-traffic-access-token": sbx.trafficAccessToken };
    const hello = await rawRequest({ path: "/", headers });
    assert.equal(hello.status, 200, hello.body.toString());
    assert.equal(hello.body.toString(), `hello / host=${sbx.getHost(PORT)} auth=none`);

    const big = await rawRequest({ path: "/big", headers });
    assert.equal(big.status, 200);
    const expected = Buffer.alloc(1 << 20);
    for (let i = 0; i < expected.length; i++) expected[i] = i % 251;
    assert.ok(big.body.equals(expected), `the 1 MiB answer came back different (${big.body.length} bytes)`);

    // No Content-Length: Node sends it chunked, hostd re-chunks it.
    const pieces = Array.from({ length: 48 }, () => randomBytes(64 << 10));
    const posted = await rawRequest({ method: "POST", path: "/upload", headers, body: pieces });
    assert.equal(posted.status, 200);
    assert.equal(posted.body.toString(), `${sha256(Buffer.concat(pieces))} ${48 * (64 << 10)}`);
  });

  test("an upgraded connection (WebSocket-style) is relayed both ways", async () => {
    const url = new URL(hostd.url);
    const echoed = await new Promise((resolve, reject) => {
      const req = http.request({
        host: url.hostname, port: url.port, path: "/ws", agent: false,
        headers: { ...byHeaders(), "X-Access-Token": sbx.envdAccessToken, Connection: "Upgrade", Upgrade: "echo" },
      });
      req.on("response", (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
      req.on("error", reject);
      req.on("upgrade", (res, socket, head) => {
        let got = head.toString();
        socket.on("data", (d) => {
          got += d.toString();
          if (got.length >= 10) {
            socket.end();
            resolve(got);
          }
        });
        socket.on("error", reject);
        socket.write("ping ");
        setTimeout(() => socket.write("pong!"), 100);
      });
      req.end();
    });
    assert.equal(echoed, "ping pong!");
  });

  test("wrong or missing token: 401; nothing listening: 502", async () => {
    for (const headers of [
      byHeaders(),
      { ...byHeaders(), "X-Access-Token": "0".repeat(64) },
      { host: sbx.getHost(PORT) },
      { host: sbx.getHost(PORT), "e2b-traffic-access-token": sbx.envdAccessToken.replace(/.$/, "x") },
    ]) {
      const res = await rawRequest({ path: "/", headers });
      assert.equal(res.status, 401, JSON.stringify(headers));
      assert.equal(JSON.parse(res.body.toString()).code, 401);
    }
    const closed = await rawRequest({ path: "/", headers: { host: sbx.getHost(8001), "X-Access-Token": sbx.envdAccessToken } });
    assert.equal(closed.status, 502);
    assert.match(JSON.parse(closed.body.toString()).message, /nothing accepts connections on port 8001/);
  });

  test("a public sandbox's ports need no token", async () => {
    const open = await e2b.Sandbox.create({ ...SLOW, timeoutMs: 600_000, network: { allowPublicTraffic: true } });
    try {
      await open.files.write("/tmp/port_server.py", readFileSync(new URL("./port_server.py", import.meta.url), "utf8"));
      await open.files.write("/tmp/probe.py", (await sbx.files.read("/tmp/probe.py")));
      await open.commands.run(`python3 /tmp/port_server.py ${PORT}`, { background: true });
      await open.commands.run("python3 /tmp/probe.py");
      const res = await rawRequest({ path: "/pub", headers: { host: open.getHost(PORT) } });
      assert.equal(res.status, 200, res.body.toString());
      assert.match(res.body.toString(), /^hello \/pub /);
    } finally {
      await open.kill();
    }
    await sbx.kill();
  });
});

// A hostd of its own whose sandboxes' uplink is a test internet in a
// network namespace (testnet.mjs): no test reaches the real internet.
describe("network: allowOut, denyOut and rules onto the allowlist and secrets (a test internet)", {
  skip: skip || unavailable(),
}, () => {
  const BRIDGE = "vf";
  let internet;
  let netHostd;
  let opts;

  before(async () => {
    internet = await TestInternet.start(BRIDGE);
    netHostd = await startHostd(located, {
      maxSandboxes: 2,
      extraConfig:
        "disable_pools: true\n" +
        `network {\n  uplink: "ve-wan"\n  uplink_gateway: "${WAN_GATEWAY}"\n  upstream_resolver: "${RESOLVER_IP}"\n` +
        `  prefix: "${BRIDGE}"\n  transit: "10.233.0.0/16"\n  route_table: 1233\n  rule_priority: 7466\n` +
        `  max_slots: 4\n  max_pooled: 1\n  upstream_extra_ca: "${internet.cert}"\n}\n`,
    });
    opts = { ...SLOW, apiKey: netHostd.key, apiUrl: netHostd.url, sandboxUrl: netHostd.url, timeoutMs: 300_000 };
  });

  after(async () => {
    const problems = netHostd ? await netHostd.stop() : [];
    let strays = 0;
    try {
      strays = internet ? internet.strayPackets() : 0;
    } finally {
      await internet?.stop();
    }
    assert.deepEqual(problems, [], "the network hostd left something behind");
    assert.equal(strays, 0, "sandbox packets were routed past the test internet");
  });

  // Each fetch from inside the guest: the body, or "refused: <why>".
  const fetchScript = (urls) => `import urllib.request
for url in ${JSON.stringify(urls)}:
    try:
        print(urllib.request.urlopen(url, timeout=10).read().decode().strip())
    except Exception as e:
        print("refused:", type(e).__name__)
`;
  const fetchAll = async (sbx, urls) => {
    await sbx.files.write("/tmp/fetch.py", fetchScript(urls));
    return (await sbx.commands.run("python3 /tmp/fetch.py", { timeoutMs: 120_000 })).stdout.trim().split("\n");
  };

  test("allowOut names with denyOut all: only those hosts; rules set headers on their HTTPS requests", async () => {
    const urls = ["http://allowed.test/", "http://denied.test/", `http://${DENIED_IP}/`, "https://allowed.test/"];
    const [restricted, open] = await Promise.all([
      e2b.Sandbox.create({
        ...opts,
        network: {
          allowOut: ["allowed.test"],
          denyOut: [e2b.ALL_TRAFFIC],
          rules: { "allowed.test": [{ transform: { headers: { Authorization: "Bearer e2b-rule-value" } } }] },
        },
      }),
      // E2B: allowOut alone denies nothing (allowOut only wins over denyOut).
      e2b.Sandbox.create({ ...opts, network: { allowOut: ["allowed.test"] } }),
    ]);
    try {
      const seen = await fetchAll(restricted, urls);
      assert.equal(seen[0], "hello from allowed host=allowed.test");
      assert.match(seen[1], /^refused: /);
      assert.match(seen[2], /^refused: /);
      assert.equal(seen[3], "hello from allowed host=allowed.test authorization=Bearer e2b-rule-value");
      // The header value never entered the sandbox.
      const grep = await restricted.commands.run("env | grep -c e2b-rule-value || true");
      assert.equal(grep.stdout.trim(), "0");

      const control = await fetchAll(open, urls.slice(0, 3));
      assert.deepEqual(control, [
        "hello from allowed host=allowed.test",
        "hello from denied host=denied.test",
        `hello from denied host=${DENIED_IP}`,
      ]);
      const fromRestricted = internet.requests().filter((l) => l.startsWith("denied "));
      assert.equal(fromRestricted.length, 2, `only the open sandbox reached denied.test: ${fromRestricted}`);
    } finally {
      await Promise.all([restricted.kill(), open.kill()]);
    }
  });

  test("allowInternetAccess: false is denyOut all; what vesicle cannot enforce is refused", async () => {
    const off = await e2b.Sandbox.create({ ...opts, allowInternetAccess: false, network: { allowOut: ["allowed.test"] } });
    try {
      const seen = await fetchAll(off, ["http://allowed.test/", "http://denied.test/"]);
      assert.equal(seen[0], "hello from allowed host=allowed.test");
      assert.match(seen[1], /^refused: /);
    } finally {
      await off.kill();
    }
    for (const [network, field] of [
      [{ denyOut: ["198.19.1.20/32"] }, /network\.denyOut: "198\.19\.1\.20\/32"/],
      [{ allowOut: [ALLOWED_IP], denyOut: [e2b.ALL_TRAFFIC] }, /network\.allowOut: "198\.19\.1\.10": .*host names/],
      [{ maskRequestHost: "x" }, /network\.maskRequestHost: not supported/],
    ]) {
      await assert.rejects(e2b.Sandbox.create({ ...opts, network }), (e) => {
        assert.ok(e instanceof e2b.SandboxError && e.statusCode === 400, `${e?.constructor?.name}: ${e?.message}`);
        assert.match(e.message, field);
        return true;
      });
    }
  });
});

// Last: it restarts hostd.
describe("a paused sandbox survives a hostd restart", { skip }, () => {
  test("pause, restart hostd, getInfo and connect: files, metadata and token kept", async () => {
    const sbx = await e2b.Sandbox.create({ ...SLOW, timeoutMs: 600_000, metadata: { keep: "me" } });
    await sbx.files.write("/root/kept.txt", "still here");
    assert.equal(await sbx.pause(SLOW), true);
    const table = join(hostd.top, "state", "e2b-sandboxes.json");
    assert.equal(statSync(table).mode & 0o777, 0o600);
    assert.match(readFileSync(table, "utf8"), new RegExp(sbx.sandboxId));

    hostd.proc.kill("SIGTERM");
    await hostd.exited;
    // launch() finds the address in the log: the new hostd's, not the old one's.
    renameSync(hostd.logPath, `${hostd.logPath}.before-restart`);
    await hostd.launch();
    process.env.E2B_API_URL = hostd.url;
    process.env.E2B_SANDBOX_URL = hostd.url;

    const info = await e2b.Sandbox.getInfo(sbx.sandboxId);
    assert.equal(info.state, "paused");
    assert.deepEqual(info.metadata, { keep: "me" });
    const back = await e2b.Sandbox.connect(sbx.sandboxId, SLOW);
    assert.equal(await back.files.read("/root/kept.txt"), "still here");
    await back.kill();
    await assert.rejects(e2b.Sandbox.getInfo(sbx.sandboxId), (e) => e instanceof e2b.NotFoundError);
    assert.doesNotMatch(readFileSync(table, "utf8"), new RegExp(sbx.sandboxId));
  });
});
