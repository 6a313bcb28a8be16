// vesicle's two MCP servers driven by the official MCP TypeScript client
// (@modelcontextprotocol/sdk from npm) against a real hostd with real VMs:
// `python3 -m vesicle mcp` over stdio, and hostd's /mcp over streamable
// HTTP with the bearer key. Both run the same scenario: list the tools,
// create a sandbox, run code that draws a matplotlib chart (an image comes
// back and decodes as a PNG), see state persist, move files, fork,
// merge_into, freeze, resume, close. The HTTP
// transport's own rules (key, session header, GET, DELETE, bad bodies) are
// checked with plain fetch.
//
// hostd comes from sdk/typescript/test/hostd_process.mjs (its own temp dirs
// and keys; stop() reports any VM or file left behind).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { join } from "node:path";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

import { REPO, locateHostd, startHostd } from "../../sdk/typescript/test/hostd_process.mjs";

const TOOLS = [
  "create_sandbox", "list_sandboxes", "close_sandbox", "run_python", "run_bash", "upload_file",
  "download_file", "fork", "merge_into", "freeze", "resume",
].sort();
// Creates and forks wait for a VM under TCG: far beyond the SDK's 60 s default.
const CALL = { timeout: 300_000 };
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const located = locateHostd();
let hostd;

before(async () => {
  if (located.skip) return;
  hostd = await startHostd(located);
});

after(async () => {
  if (!hostd) return;
  const problems = await hostd.stop();
  assert.deepEqual(problems, [], "hostd left something behind");
});

async function call(client, name, args) {
  return client.callTool({ name, arguments: args }, undefined, CALL);
}

// The JSON a tool answers with (its first content block); fails on isError.
async function callJson(client, name, args) {
  const result = await call(client, name, args);
  assert.equal(result.isError, false, `${name} failed: ${JSON.stringify(result.content)}`);
  assert.equal(result.content[0].type, "text");
  return { doc: JSON.parse(result.content[0].text), result };
}

// The scenario both transports run.
async function scenario(client) {
  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((t) => t.name).sort(), TOOLS);
  for (const tool of tools) {
    assert.ok(tool.description.length > 40, `${tool.name} has a real description`);
    assert.equal(tool.inputSchema.type, "object");
  }
  const create = tools.find((t) => t.name === "create_sandbox");
  assert.match(create.description, /close_sandbox/);
  assert.deepEqual(create.inputSchema.properties.egress.enum, ["off", "open", "allowlist"]);
  assert.match(tools.find((t) => t.name === "run_python").description, /persist/);

  const { doc: sandbox } = await callJson(client, "create_sandbox", { egress: "off", idle_timeout_s: 600 });
  assert.match(sandbox.id, /^sb-[0-9a-f]+$/);
  assert.equal(sandbox.state, "ready");
  assert.equal(sandbox.egress_mode, "off");
  const ids = [sandbox.id];
  try {
    await callJson(client, "run_python", { sandbox_id: sandbox.id, code: "x = 21" });
    const { doc: run, result } = await callJson(client, "run_python", {
      sandbox_id: sandbox.id,
      code: "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()\nprint(x * 2)\nx",
    });
    assert.equal(run.stdout, "42\n", JSON.stringify(run).slice(0, 3000));
    assert.equal(run.result, "21");
    assert.equal(run.error, null);
    const images = result.content.filter((c) => c.type === "image");
    assert.equal(images.length, 1, `one chart: ${JSON.stringify(result.content.map((c) => c.type))}`);
    assert.equal(images[0].mimeType, "image/png");
    const png = Buffer.from(images[0].data, "base64");
    assert.ok(png.length > 1000, `a real chart, ${png.length} bytes`);
    assert.deepEqual(png.subarray(0, 8), PNG_SIGNATURE);

    const { doc: failed } = await callJson(client, "run_python", { sandbox_id: sandbox.id, code: "1/0" });
    assert.equal(failed.error.name, "ZeroDivisionError");

    const { doc: bash } = await callJson(client, "run_bash", { sandbox_id: sandbox.id, command: "echo hi >&2; exit 3" });
    assert.equal(bash.stderr, "hi\n");
    assert.equal(bash.exit_code, 3);

    await callJson(client, "upload_file", { sandbox_id: sandbox.id, path: "/tmp/mcp/a.txt", content: "héllo" });
    const { doc: file } = await callJson(client, "download_file", { sandbox_id: sandbox.id, path: "/tmp/mcp/a.txt" });
    assert.deepEqual(file, { path: "/tmp/mcp/a.txt", size: 6, encoding: "text", content: "héllo" });
    const bytes = Buffer.from([0, 255, 1, 254]);
    await callJson(client, "upload_file", { sandbox_id: sandbox.id, path: "/tmp/mcp/b.bin", content: bytes.toString("base64"), encoding: "base64" });
    const { doc: binary } = await callJson(client, "download_file", { sandbox_id: sandbox.id, path: "/tmp/mcp/b.bin" });
    assert.equal(binary.encoding, "base64");
    assert.deepEqual(Buffer.from(binary.content, "base64"), bytes);

    const { doc: forked } = await callJson(client, "fork", { sandbox_id: sandbox.id, n: 1 });
    assert.equal(forked.children.length, 1);
    const child = forked.children[0];
    ids.push(child.id);
    assert.equal(child.forked_from, sandbox.id);
    const { doc: inChild } = await callJson(client, "run_python", { sandbox_id: child.id, code: "x += 1\nx" });
    assert.equal(inChild.result, "22", "the child has the parent's globals");

    const { doc: listed } = await callJson(client, "list_sandboxes", {});
    assert.deepEqual(listed.sandboxes.map((s) => s.id).sort(), [...ids].sort());

    // The parent continues as the child; the child's id is gone.
    const { doc: merged } = await callJson(client, "merge_into", { sandbox_id: sandbox.id, winner_id: child.id });
    assert.equal(merged.id, sandbox.id);
    ids.pop();
    const { doc: afterMerge } = await callJson(client, "run_python", { sandbox_id: sandbox.id, code: "x" });
    assert.equal(afterMerge.result, "22");
    // To disk and back, as a new sandbox with the same globals.
    const { doc: space } = await callJson(client, "freeze", { sandbox_id: sandbox.id });
    assert.equal(space.sandbox_id, sandbox.id);
    const { doc: resumed } = await callJson(client, "resume", { space_id: space.space_id });
    ids.push(resumed.id);
    assert.equal(resumed.resumed_from, space.space_id);
    const { doc: afterResume } = await callJson(client, "run_python", { sandbox_id: resumed.id, code: "x" });
    assert.equal(afterResume.result, "22");

    // Tool errors: results with isError and a message, not protocol errors.
    const bad = await call(client, "run_python", { sandbox_id: sandbox.id, code: 5 });
    assert.equal(bad.isError, true);
    assert.match(bad.content[0].text, /code: must be a string/);
    const missing = await call(client, "run_python", { sandbox_id: "sb-000000000000", code: "1" });
    assert.equal(missing.isError, true);
    assert.match(missing.content[0].text, /sb-000000000000/);
  } finally {
    for (const id of ids.reverse()) {
      const { doc } = await callJson(client, "close_sandbox", { sandbox_id: id });
      assert.deepEqual(doc, { closed: id });
    }
  }
  const { doc: empty } = await callJson(client, "list_sandboxes", {});
  assert.deepEqual(empty.sandboxes, []);
  // An unknown tool is a protocol error.
  await assert.rejects(call(client, "no_such_tool", {}), /no_such_tool/);
}

describe("MCP over stdio: python3 -m vesicle mcp", { skip: located.skip }, () => {
  test("the official client lists tools, creates, charts, moves files, forks, merges, freezes, resumes and closes", async () => {
    const transport = new StdioClientTransport({
      command: "python3",
      args: ["-m", "vesicle", "mcp"],
      env: {
        PATH: process.env.PATH,
        PYTHONPATH: join(REPO, "sdk", "python"),
        VESICLE_URL: hostd.url,
        VESICLE_API_KEY: hostd.key,
      },
      stderr: "pipe",
    });
    let stderr = "";
    transport.stderr?.on("data", (chunk) => (stderr += chunk));
    const client = new Client({ name: "vesicle-test", version: "1.0.0" });
    await client.connect(transport);
    try {
      assert.equal(client.getServerVersion().name, "vesicle");
      await scenario(client);
    } finally {
      await client.close();
    }
    assert.equal(stderr, "", "vesicle mcp wrote nothing to stderr");
  });
});

describe("MCP over streamable HTTP: hostd's /mcp", { skip: located.skip }, () => {
  const auth = () => ({ Authorization: `Bearer ${hostd.key}` });

  test("the official client lists tools, creates, charts, moves files, forks, merges, freezes, resumes and closes", async () => {
    const transport = new StreamableHTTPClientTransport(new URL("/mcp", hostd.url), {
      requestInit: { headers: auth() },
    });
    const client = new Client({ name: "vesicle-test", version: "1.0.0" });
    await client.connect(transport);
    try {
      assert.equal(client.getServerVersion().name, "vesicle-hostd");
      assert.match(transport.sessionId, /^[0-9a-f]{32}$/);
      await scenario(client);
      await transport.terminateSession();
    } finally {
      await client.close();
    }
  });

  test("the transport's rules: key, session, methods, bad bodies", async () => {
    const url = hostd.url + "/mcp";
    const post = (body, headers = {}) =>
      fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json, text/event-stream", ...auth(), ...headers },
        body,
      });
    const init = JSON.stringify({
      jsonrpc: "2.0", id: 1, method: "initialize",
      params: { protocolVersion: "2025-06-18", capabilities: {}, clientInfo: { name: "raw", version: "0" } },
    });

    const noKey = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: init });
    assert.equal(noKey.status, 401);
    const otherKey = await post(init, { Authorization: `Bearer vsk_wrong` });
    assert.equal(otherKey.status, 401);

    const started = await post(init);
    assert.equal(started.status, 200);
    assert.match(started.headers.get("content-type"), /application\/json/);
    const session = started.headers.get("mcp-session-id");
    assert.match(session, /^[0-9a-f]{32}$/);
    assert.equal((await started.json()).result.protocolVersion, "2025-06-18");
    const withSession = { "Mcp-Session-Id": session };

    const ping = JSON.stringify({ jsonrpc: "2.0", id: 2, method: "ping" });
    const noSession = await post(ping);
    assert.equal(noSession.status, 400);
    assert.match((await noSession.json()).error.message, /Mcp-Session-Id/);
    assert.equal((await post(ping, { "Mcp-Session-Id": "f".repeat(32) })).status, 404);
    // A session belongs to the key that opened it.
    assert.equal((await post(ping, { ...withSession, Authorization: `Bearer ${hostd.otherKey}` })).status, 404);
    const pong = await post(ping, withSession);
    assert.equal(pong.status, 200);
    assert.deepEqual(await pong.json(), { jsonrpc: "2.0", id: 2, result: {} });

    const note = await post(JSON.stringify({ jsonrpc: "2.0", method: "notifications/initialized" }), withSession);
    assert.equal(note.status, 202);
    assert.equal(await note.text(), "");

    const broken = await post("{nope", withSession);
    assert.equal(broken.status, 200);
    assert.equal((await broken.json()).error.code, -32700);
    const unknown = await post(JSON.stringify({ jsonrpc: "2.0", id: 3, method: "sampling/createMessage" }), withSession);
    assert.equal((await unknown.json()).error.code, -32601);
    const badVersion = await post(ping, { ...withSession, "MCP-Protocol-Version": "1999-01-01" });
    assert.equal(badVersion.status, 400);
    const wrongType = await post(ping, { ...withSession, "Content-Type": "text/plain" });
    assert.equal(wrongType.status, 415);
    const huge = await post(JSON.stringify({ jsonrpc: "2.0", id: 4, method: "ping", params: { pad: "x".repeat(2 << 20) } }), withSession);
    assert.equal(huge.status, 413);

    const get = await fetch(url, { headers: { Accept: "text/event-stream", ...auth(), ...withSession } });
    assert.equal(get.status, 405);
    await get.arrayBuffer();

    const ended = await fetch(url, { method: "DELETE", headers: { ...auth(), ...withSession } });
    assert.equal(ended.status, 204);
    assert.equal((await post(ping, withSession)).status, 404);
  });
});
