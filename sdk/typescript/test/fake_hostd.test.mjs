// The SDK against a scripted fake hostd (test/fake_hostd.mjs): the request
// each call sends, every error status's class, the exec stream read as it
// arrives, display outputs, broken streams, file transfers, timeouts.
// What a real hostd does is tested in hostd.test.mjs.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Readable } from "node:stream";
import { after, before, beforeEach, describe, it } from "node:test";

import {
  AuthenticationError,
  CapacityError,
  Client,
  ConfigurationError,
  ConflictError,
  InvalidRequestError,
  MethodNotAllowedError,
  NotFoundError,
  PayloadTooLargeError,
  ProtocolError,
  QuotaExceededError,
  Sandbox,
  SandboxClosedError,
  SandboxDiedError,
  ServerError,
  SpaceCorruptedError,
  VERSION,
  VesicleConnectionError,
  VesicleError,
  VesicleTimeoutError,
} from "../dist/index.js";
import { FakeHostd, ndjson, sandboxInfo, sendJson } from "./fake_hostd.mjs";

const KEY = "vsk_fake0123";
// A 1x1 PNG.
const PNG = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
  "base64",
);

let fake;
let opts;

before(async () => {
  delete process.env.VESICLE_URL;
  delete process.env.VESICLE_API_KEY;
});

beforeEach(async () => {
  if (fake) await fake.close();
  fake = await new FakeHostd().start();
  opts = { url: fake.url, apiKey: KEY };
});

after(async () => {
  if (fake) await fake.close();
});

async function createdSandbox(extra = {}) {
  fake.json("POST", "/v1/sandboxes", 200, sandboxInfo("sb-000000000001", extra));
  return Sandbox.create(opts);
}

function execRoute(script) {
  fake.route("POST", "/v1/sandboxes/sb-000000000001/exec", async (_req, res) => {
    const write = ndjson(res);
    await script(write, res);
    res.end();
  });
}

describe("configuration", () => {
  it("takes the URL and key from VESICLE_URL and VESICLE_API_KEY", async () => {
    fake.json("POST", "/v1/sandboxes", 200, sandboxInfo("sb-000000000001"));
    process.env.VESICLE_URL = fake.url + "/";
    process.env.VESICLE_API_KEY = ` ${KEY}\n`;
    try {
      const sb = await Sandbox.create();
      assert.equal(sb.id, "sb-000000000001");
    } finally {
      delete process.env.VESICLE_URL;
      delete process.env.VESICLE_API_KEY;
    }
    const req = fake.last("POST", "/v1/sandboxes");
    assert.equal(req.headers.authorization, `Bearer ${KEY}`);
    assert.equal(req.headers["user-agent"], `vesicle-typescript/${VERSION}`);
  });

  it("refuses a create without a key, before any request", async () => {
    await assert.rejects(Sandbox.create({ url: fake.url }), (err) => {
      assert.ok(err instanceof ConfigurationError);
      assert.match(err.message, /VESICLE_API_KEY/);
      return true;
    });
    assert.equal(fake.requests.length, 0);
  });

  it("names a bad URL and where it came from", async () => {
    process.env.VESICLE_URL = "ftp://example.com";
    try {
      await assert.rejects(Sandbox.list({ apiKey: KEY }), (err) => {
        assert.ok(err instanceof ConfigurationError);
        assert.match(err.message, /VESICLE_URL "ftp:\/\/example.com" is not an http/);
        return true;
      });
    } finally {
      delete process.env.VESICLE_URL;
    }
    await assert.rejects(Sandbox.list({ url: "http://h:1/?x=1", apiKey: KEY }), /must not carry a query/);
  });

  it("has the version of package.json", () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
    assert.equal(VERSION, pkg.version);
  });
});

describe("create", () => {
  it("sends only the options given, in hostd's field names", async () => {
    fake.json("POST", "/v1/sandboxes", 200, sandboxInfo("sb-000000000001", { egress_mode: "allowlist" }));
    const sb = await Sandbox.create({
      ...opts,
      template: "py",
      vcpus: 2,
      memoryMib: 512,
      diskMib: 1024,
      egress: true,
      egressAllow: ["pypi.org"],
      idleTimeoutS: 60,
      maxLifetimeS: 600,
      persistent: true,
      region: "eu",
      timeoutMs: 5000,
    });
    assert.deepEqual(JSON.parse(fake.last("POST", "/v1/sandboxes").body), {
      template: "py",
      vcpus: 2,
      memory_mib: 512,
      disk_mib: 1024,
      egress: true,
      egress_allow: ["pypi.org"],
      idle_timeout_s: 60,
      max_lifetime_s: 600,
      persistent: true,
      region: "eu",
    });
    assert.equal(sb.state, "ready");
    assert.equal(sb.egress, "allowlist");
    await Sandbox.create(opts);
    assert.deepEqual(JSON.parse(fake.last("POST", "/v1/sandboxes").body), {});
  });

  it("rejects an unknown option and a bare egressAllow string with the fix", async () => {
    await assert.rejects(Sandbox.create({ ...opts, memoryMB: 512 }), (err) => {
      assert.ok(err instanceof InvalidRequestError);
      assert.match(err.message, /unknown Sandbox.create option "memoryMB".*memoryMib/);
      return true;
    });
    await assert.rejects(Sandbox.create({ ...opts, egressAllow: "pypi.org" }), /\["pypi.org"\]/);
    assert.equal(fake.requests.length, 0);
  });

  it("throws ProtocolError for a sandbox object without an id", async () => {
    fake.json("POST", "/v1/sandboxes", 200, { state: "ready" });
    await assert.rejects(Sandbox.create(opts), ProtocolError);
  });
});

describe("errors", () => {
  const cases = [
    [400, "invalid_argument", InvalidRequestError],
    [401, "unauthenticated", AuthenticationError],
    [404, "not_found", NotFoundError],
    [405, "method_not_allowed", MethodNotAllowedError],
    [409, "failed_precondition", ConflictError],
    [410, "sandbox_died", SandboxDiedError],
    [413, "too_large", PayloadTooLargeError],
    [422, "space_corrupted", SpaceCorruptedError],
    [429, "quota_exceeded", QuotaExceededError],
    [500, "internal", ServerError],
    [503, "no_capacity", CapacityError],
  ];
  for (const [status, code, cls] of cases) {
    it(`maps HTTP ${status} to ${cls.name}`, async () => {
      fake.json("GET", "/v1/sandboxes/sb-x", status, { error: { code, message: `why ${status}` } });
      await assert.rejects(Sandbox.connect("sb-x", opts), (err) => {
        assert.ok(err instanceof cls, `${err.name} is not a ${cls.name}`);
        assert.ok(err instanceof VesicleError);
        assert.equal(err.name, cls.name);
        assert.equal(err.code, code);
        assert.equal(err.status, status);
        assert.equal(err.message, `why ${status}`);
        return true;
      });
    });
  }

  it("describes an answer that is not the error JSON by its status and text", async () => {
    fake.route("GET", "/v1/sandboxes/sb-x", (_req, res) => {
      res.writeHead(502, { "Content-Type": "text/html" });
      res.end("<h1>Bad gateway</h1>");
    });
    await assert.rejects(Sandbox.connect("sb-x", opts), (err) => {
      assert.equal(err.constructor, VesicleError);
      assert.equal(err.status, 502);
      assert.match(err.message, /^hostd answered HTTP 502 Bad Gateway: <h1>Bad gateway<\/h1>$/);
      return true;
    });
  });

  it("says hostd is not running when the connection is refused", async () => {
    const url = fake.url;
    await fake.close();
    fake = undefined;
    await assert.rejects(Sandbox.connect("sb-x", { url, apiKey: KEY }), (err) => {
      assert.ok(err instanceof VesicleConnectionError);
      assert.equal(err.code, "connection");
      assert.match(err.message, /connection refused.*is hostd running\?/);
      return true;
    });
  });

  it("times out when hostd stays silent longer than timeoutMs", async () => {
    fake.route("GET", "/v1/sandboxes/sb-x", () => new Promise(() => {})); // never answers
    const started = Date.now();
    await assert.rejects(Sandbox.connect("sb-x", { ...opts, timeoutMs: 300 }), (err) => {
      assert.ok(err instanceof VesicleTimeoutError);
      assert.ok(err instanceof VesicleConnectionError);
      assert.match(err.message, /sent nothing for 0.3 s while looking up sb-x/);
      return true;
    });
    assert.ok(Date.now() - started < 5000);
  });

  it("resends a lookup once when the connection closes before an answer, never a create", async () => {
    let hits = 0;
    const dropFirst = (doc) => (_req, res) => {
      hits += 1;
      if (hits === 1) res.socket.destroy(); // as hostd closing an idle kept-alive connection
      else sendJson(res, 200, doc);
    };
    fake.route("GET", "/v1/sandboxes/sb-x", dropFirst(sandboxInfo("sb-x")));
    assert.equal((await Sandbox.connect("sb-x", opts)).id, "sb-x");
    assert.equal(hits, 2);
    hits = 0;
    fake.route("POST", "/v1/sandboxes", dropFirst(sandboxInfo("sb-y")));
    await assert.rejects(Sandbox.create(opts), VesicleConnectionError);
    assert.equal(hits, 1);
  });

  it("reports a connection cut mid-answer as a connection error", async () => {
    fake.route("GET", "/v1/sandboxes/sb-x", (_req, res) => {
      res.writeHead(200, { "Content-Type": "application/json", "Content-Length": "100" });
      res.write('{"id": "sb-');
      setTimeout(() => res.socket.destroy(), 50);
    });
    await assert.rejects(Sandbox.connect("sb-x", opts), (err) => {
      assert.ok(err instanceof VesicleConnectionError, `${err.name}: ${err.message}`);
      assert.match(err.message, /closed in the middle of looking up sb-x|failed while looking up sb-x/);
      return true;
    });
  });
});

describe("runCode", () => {
  it("calls onStdout as each event arrives, before the stream ends", async () => {
    let seen;
    const seenFirst = new Promise((resolve) => (seen = resolve));
    execRoute(async (write) => {
      write({ type: "stdout", data: "first\n" });
      // The rest is sent only once the client has shown the first line: a
      // client that waited for the whole body would never get here.
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error("onStdout was not called for the first line")), 5000);
      });
      await Promise.race([seenFirst, late]).finally(() => clearTimeout(timer));
      write({ type: "stderr", data: "warn\n" });
      write({ type: "stdout", data: "second\n" });
      write({ type: "result", data: "42" });
      write({ type: "exit", exit_code: 0, duration_ms: 12 });
    });
    const sb = await createdSandbox();
    const out = [];
    const err = [];
    const ex = await sb.runCode("print('first'); ...", {
      onStdout: (chunk) => {
        out.push(chunk);
        seen();
      },
      onStderr: (chunk) => err.push(chunk),
    });
    assert.deepEqual(out, ["first\n", "second\n"]);
    assert.deepEqual(err, ["warn\n"]);
    assert.equal(ex.stdout, "first\nsecond\n");
    assert.equal(ex.stderr, "warn\n");
    assert.equal(ex.result, "42");
    assert.equal(ex.error, undefined);
    assert.deepEqual(ex.results, []);
    assert.equal(ex.exitCode, 0);
    assert.equal(ex.durationMs, 12);
    assert.equal(ex.text, "first\nwarn\nsecond\n42");
    const req = fake.last("POST", "/v1/sandboxes/sb-000000000001/exec");
    assert.deepEqual(JSON.parse(req.body), { code: "print('first'); ...", language: "python" });
    assert.equal(req.headers.accept, "application/x-ndjson");
  });

  it("sends bash's env, cwd and the timeout in whole seconds, and reads the exit event", async () => {
    execRoute(async (write) => {
      write({ type: "stdout", data: "x" });
      write({ type: "exit", exit_code: 3, signal: "9", timed_out: true, truncated: true, repl_restarted: true });
    });
    const sb = await createdSandbox();
    const ex = await sb.runCode("exit 3", { language: "bash", env: { A: "1" }, cwd: "/tmp", timeoutMs: 1500 });
    assert.deepEqual(JSON.parse(fake.last("POST", "/v1/sandboxes/sb-000000000001/exec").body), {
      code: "exit 3",
      language: "bash",
      timeout_s: 2,
      env: { A: "1" },
      cwd: "/tmp",
    });
    assert.equal(ex.exitCode, 3);
    assert.equal(ex.signal, 9);
    assert.equal(ex.timedOut, true);
    assert.equal(ex.truncated, true);
    assert.equal(ex.replRestarted, true);
  });

  it("gives the exception's name, value and traceback", async () => {
    execRoute(async (write) => {
      write({ type: "error", name: "ZeroDivisionError", value: "division by zero", traceback: "Traceback...\nZeroDivisionError: division by zero" });
      write({ type: "exit", exit_code: 1 });
    });
    const sb = await createdSandbox();
    const ex = await sb.runCode("1/0");
    assert.equal(ex.error.name, "ZeroDivisionError");
    assert.equal(ex.error.value, "division by zero");
    assert.match(ex.error.traceback, /^Traceback/);
    assert.equal(String(ex.error), "ZeroDivisionError: division by zero");
  });

  it("keeps exact bytes and joins a character split across events", async () => {
    const e = Buffer.from("é");
    execRoute(async (write) => {
      write({ type: "stdout", data_b64: e.subarray(0, 1).toString("base64") });
      write({ type: "stdout", data_b64: e.subarray(1).toString("base64") });
      write({ type: "stdout", data_b64: Buffer.from([0xff, 0x0a]).toString("base64") });
      write({ type: "exit", exit_code: 0 });
    });
    const sb = await createdSandbox();
    const chunks = [];
    const ex = await sb.runCode("...", { onStdout: (c) => chunks.push(c) });
    assert.deepEqual(chunks, ["é", "\ufffd\n"]);
    assert.deepEqual(Buffer.from(ex.stdoutBytes), Buffer.concat([e, Buffer.from([0xff, 0x0a])]));
    assert.equal(ex.stdout, "é\ufffd\n");
  });

  it("parses display events into results as they arrive: png bytes, html, text, json", async () => {
    execRoute(async (write) => {
      // hostd's shape: text types in data, the rest base64 in data_b64.
      write({
        type: "display",
        data: { "text/plain": "<Figure size 640x480 with 1 Axes>" },
        data_b64: { "image/png": PNG.toString("base64") },
        is_main_result: false,
      });
      write({ type: "stdout", data: "between\n" });
      write({
        type: "display",
        data: { "text/html": "<table><tr><td>1</td></tr></table>", "text/plain": "   a\n0  1", "application/json": '{"a": [1]}' },
        is_main_result: true,
      });
      write({ type: "result", data: "   a\n0  1" });
      write({ type: "exit", exit_code: 0 });
    });
    const sb = await createdSandbox();
    const order = [];
    const ex = await sb.runCode("plt.show(); df", {
      onStdout: (text) => order.push(text),
      onResult: (result) => order.push(result.formats()),
    });
    assert.deepEqual(order, [["text", "png"], "between\n", ["html", "text", "json"]]);
    assert.equal(ex.results.length, 2);
    const [figure, table] = ex.results;
    assert.ok(figure.png instanceof Uint8Array);
    assert.deepEqual(Buffer.from(figure.png), PNG);
    assert.deepEqual(Buffer.from(figure.data["image/png"]), PNG);
    assert.equal(figure.text, "<Figure size 640x480 with 1 Axes>");
    assert.equal(figure.html, undefined);
    assert.equal(figure.isMainResult, false);
    assert.match(table.html, /^<table/);
    assert.equal(table.text, ex.result);
    assert.deepEqual(table.json, { a: [1] });
    assert.equal(table.png, undefined);
    assert.equal(table.isMainResult, true);
  });

  it("also takes a bundle whose image is base64 in data and whose JSON is a value", async () => {
    execRoute(async (write) => {
      write({ type: "display", data: { "image/png": PNG.toString("base64"), "application/json": { b: 2 } } });
      write({ type: "exit", exit_code: 0 });
    });
    const sb = await createdSandbox();
    const [only] = (await sb.runCode("x")).results;
    assert.deepEqual(Buffer.from(only.png), PNG);
    assert.deepEqual(only.json, { b: 2 });
  });

  it("rejects a display event whose png is not base64", async () => {
    execRoute(async (write) => {
      write({ type: "display", data_b64: { "image/png": "not base64!" } });
      write({ type: "exit", exit_code: 0 });
    });
    const sb = await createdSandbox();
    await assert.rejects(sb.runCode("x"), (err) => err instanceof ProtocolError && /image\/png in data_b64 is not base64/.test(err.message));
  });

  it("skips event types newer than the SDK", async () => {
    execRoute(async (write) => {
      write({ type: "progress", percent: 50 });
      write({ type: "exit", exit_code: 0 });
    });
    const sb = await createdSandbox();
    assert.equal((await sb.runCode("x")).exitCode, 0);
  });

  it("throws SandboxDiedError carrying what came before when the exit reports a failure", async () => {
    execRoute(async (write) => {
      write({ type: "stdout", data: "partial\n" });
      write({ type: "exit", exit_code: -1, failure: { code: "sandbox_died", message: "the VM died: kernel panic" } });
    });
    const sb = await createdSandbox();
    await assert.rejects(sb.runCode("x"), (err) => {
      assert.ok(err instanceof SandboxDiedError);
      assert.equal(err.message, "the VM died: kernel panic");
      assert.equal(err.status, undefined);
      assert.equal(err.execution.stdout, "partial\n");
      return true;
    });
  });

  it("throws ProtocolError when the stream ends without an exit event, or has a malformed line", async () => {
    execRoute(async (write) => write({ type: "stdout", data: "x" }));
    const sb = await createdSandbox();
    await assert.rejects(sb.runCode("x"), /ended without an exit event/);
    fake.routes = [];
    execRoute(async (_write, res) => res.write("{not json\n"));
    await assert.rejects(sb.runCode("x"), (err) => err instanceof ProtocolError && /malformed exec event \(line 1/.test(err.message));
  });

  it("checks its arguments before sending anything", async () => {
    const sb = await createdSandbox();
    const before = fake.requests.length;
    await assert.rejects(sb.runCode("x", { language: "ruby" }), InvalidRequestError);
    await assert.rejects(sb.runCode("x", { timeoutMs: 0 }), InvalidRequestError);
    await assert.rejects(sb.runCode(42), InvalidRequestError);
    await assert.rejects(sb.fork({ n: 33 }), InvalidRequestError);
    await assert.rejects(sb.files.write("relative.txt", "x"), /must be absolute/);
    await assert.rejects(sb.files.write("/x", 42), /file data must be/);
    assert.equal(fake.requests.length, before);
  });
});

describe("files", () => {
  it("uploads bytes with a length and a stream chunked, and answers hostd's path and size", async () => {
    fake.route("PUT", "/v1/sandboxes/sb-000000000001/files", (_req, res, record) =>
      sendJson(res, 200, { path: record.query.path, size: record.body.length }),
    );
    const sb = await createdSandbox();
    const bytes = new Uint8Array([0, 1, 2, 255]);
    assert.deepEqual(await sb.files.write("/data/a.bin", bytes, { mode: 0o755 }), { path: "/data/a.bin", size: 4 });
    let req = fake.last("PUT", "/v1/sandboxes/sb-000000000001/files");
    assert.deepEqual(req.query, { path: "/data/a.bin", mode: "0755" });
    assert.equal(req.headers["content-length"], "4");
    assert.deepEqual([...req.body], [0, 1, 2, 255]);

    const parts = [Buffer.from("hello "), "wörld", Buffer.alloc(300_000, 7)];
    const info = await sb.files.write("/data/b.bin", Readable.from(parts));
    req = fake.last("PUT", "/v1/sandboxes/sb-000000000001/files");
    assert.equal(req.headers["transfer-encoding"], "chunked");
    const expected = Buffer.concat([Buffer.from("hello "), Buffer.from("wörld"), Buffer.alloc(300_000, 7)]);
    assert.deepEqual(req.body, expected);
    assert.equal(info.size, expected.length);

    await sb.files.write("/data/c.txt", new Blob(["blob text"]));
    assert.equal(fake.last("PUT", "/v1/sandboxes/sb-000000000001/files").body.toString(), "blob text");
    await sb.files.write("/data/d.txt", "plain text");
    assert.equal(fake.last("PUT", "/v1/sandboxes/sb-000000000001/files").body.toString(), "plain text");
  });

  it("passes an upload stream's own error through", async () => {
    fake.route("PUT", "/v1/sandboxes/sb-000000000001/files", (_req, res, record) =>
      sendJson(res, 200, { path: record.query.path, size: record.body.length }),
    );
    const sb = await createdSandbox();
    async function* failing() {
      yield Buffer.from("a");
      throw new Error("disk read failed");
    }
    await assert.rejects(sb.files.write("/x", failing()), /disk read failed/);
  });

  it("downloads whole or as a stream, and a missing file is NotFoundError", async () => {
    const content = Buffer.alloc(1 << 20);
    for (let i = 0; i < content.length; i++) content[i] = (i * 7) & 0xff;
    fake.route("GET", "/v1/sandboxes/sb-000000000001/files", (_req, res, record) => {
      if (record.query.path !== "/data/big.bin") {
        sendJson(res, 404, { error: { code: "not_found", message: `no file ${record.query.path}` } });
        return;
      }
      res.writeHead(200, { "Content-Type": "application/octet-stream" });
      res.end(content);
    });
    const sb = await createdSandbox();
    assert.deepEqual(Buffer.from(await sb.files.read("/data/big.bin")), content);
    const stream = await sb.files.readStream("/data/big.bin");
    const parts = [];
    for await (const chunk of stream) parts.push(chunk);
    assert.ok(parts.length > 1, "a MiB comes in more than one chunk");
    assert.deepEqual(Buffer.concat(parts), content);
    await assert.rejects(sb.files.read("/data/none"), (err) => err instanceof NotFoundError && err.message === "no file /data/none");
  });
});

describe("lifecycle", () => {
  it("fork gives ready children, mergeInto closes the winner, freeze stops code", async () => {
    const sb = await createdSandbox();
    fake.json("POST", "/v1/sandboxes/sb-000000000001/fork", 200, {
      children: [sandboxInfo("sb-00000000000a", { source: "fork", forked_from: sb.id }), sandboxInfo("sb-00000000000b", { source: "fork", forked_from: sb.id })],
      server_ms: 10,
    });
    const kids = await sb.fork({ n: 2 });
    assert.deepEqual(JSON.parse(fake.last("POST", "/v1/sandboxes/sb-000000000001/fork").body), { n: 2 });
    assert.deepEqual(kids.map((k) => k.id), ["sb-00000000000a", "sb-00000000000b"]);
    assert.equal(kids[0].forkedFrom, sb.id);

    fake.json("POST", "/v1/sandboxes/sb-000000000001/merge_into/sb-00000000000a", 200, sandboxInfo(sb.id));
    await sb.mergeInto(kids[0]);
    assert.equal(kids[0].closed, true);
    await assert.rejects(kids[0].runCode("x"), SandboxClosedError);

    fake.json("POST", "/v1/sandboxes/sb-000000000001/freeze", 200, {
      space_id: "sp-000000000009",
      sandbox_id: sb.id,
      reason: "freeze",
      size_bytes: 1.5e8,
      state_bytes: 1.2e8,
      disk_bytes: "30000000",
    });
    assert.equal(await sb.freeze(), "sp-000000000009");
    assert.equal(sb.state, "frozen");
    assert.equal(sb.spaceId, "sp-000000000009");
    assert.equal(sb.space.sizeBytes, 150000000);
    assert.equal(sb.space.diskBytes, 30000000);
    await assert.rejects(sb.runCode("x"), (err) => err instanceof SandboxClosedError && /Sandbox.resume\("sp-000000000009"\)/.test(err.message));

    fake.json("POST", "/v1/spaces/sp-000000000009/resume", 200, sandboxInfo("sb-00000000000c", { source: "space", resumed_from: "sp-000000000009" }));
    const resumed = await Sandbox.resume("sp-000000000009", { ...opts, persistent: true });
    assert.deepEqual(JSON.parse(fake.last("POST", "/v1/spaces/sp-000000000009/resume").body), { persistent: true });
    assert.equal(resumed.resumedFrom, "sp-000000000009");
  });

  it("close is idempotent and accepts a sandbox already gone", async () => {
    const sb = await createdSandbox();
    fake.json("DELETE", "/v1/sandboxes/sb-000000000001", 404, { error: { code: "not_found", message: "gone" } });
    await sb.close();
    await sb.close();
    assert.equal(sb.closed, true);
    assert.equal(fake.requests.filter((r) => r.method === "DELETE").length, 1);
    await assert.rejects(sb.files.read("/x"), SandboxClosedError);
  });

  it("lists sandboxes and Spaces, and health needs no key", async () => {
    fake.json("GET", "/v1/sandboxes", 200, { sandboxes: [sandboxInfo("sb-000000000001"), sandboxInfo("sb-000000000002")] });
    fake.json("GET", "/v1/spaces", 200, { spaces: [{ space_id: "sp-1", reason: "idle", egress_allow: ["a.org"] }] });
    fake.json("GET", "/v1/healthz", 200, { status: "ok", accel: "tcg", version: "0.1.0" });
    assert.deepEqual((await Sandbox.list(opts)).map((s) => s.id), ["sb-000000000001", "sb-000000000002"]);
    const [space] = await new Client(opts).spaces();
    assert.equal(space.spaceId, "sp-1");
    assert.equal(space.reason, "idle");
    assert.deepEqual(space.egressAllow, ["a.org"]);
    assert.equal((await new Client({ url: fake.url }).health()).accel, "tcg");
    assert.equal(fake.last("GET", "/v1/healthz").headers.authorization, undefined);
  });
});
