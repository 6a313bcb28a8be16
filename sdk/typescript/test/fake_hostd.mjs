// A scripted stand-in for hostd's HTTP API, for tests of what the SDK does
// with answers a real hostd gives rarely or never (each error status, a
// display event, a broken stream). Each test routes the requests it expects;
// every request is recorded (method, path, query, headers, body).

import { createServer } from "node:http";

export class FakeHostd {
  constructor() {
    this.routes = [];
    this.requests = [];
    this.server = createServer((req, res) => this.handle(req, res));
    this.sockets = new Set();
    this.server.on("connection", (socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    });
  }

  async start() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async close() {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }

  /** Answer `method` on a path matching `pattern` (a string for an exact path) with `handler(req, res, record)`. */
  route(method, pattern, handler) {
    this.routes.push({ method, pattern, handler });
  }

  /** Answer with a JSON document and a status. */
  json(method, pattern, status, doc) {
    this.route(method, pattern, (_req, res) => sendJson(res, status, doc));
  }

  async handle(req, res) {
    const url = new URL(req.url, "http://fake");
    const parts = [];
    for await (const chunk of req) parts.push(chunk);
    const record = {
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body: Buffer.concat(parts),
    };
    this.requests.push(record);
    const route = this.routes.find(
      (r) =>
        r.method === req.method &&
        (typeof r.pattern === "string" ? r.pattern === url.pathname : r.pattern.test(url.pathname)),
    );
    if (!route) {
      sendJson(res, 404, { error: { code: "not_found", message: `fake hostd: no route for ${req.method} ${url.pathname}` } });
      return;
    }
    try {
      await route.handler(req, res, record);
    } catch (err) {
      res.destroy(err);
    }
  }

  /** The last recorded request to `method` `path`. */
  last(method, path) {
    return this.requests.filter((r) => r.method === method && r.path === path).at(-1);
  }
}

export function sendJson(res, status, doc) {
  const body = Buffer.from(JSON.stringify(doc));
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": body.length });
  res.end(body);
}

/** Start an NDJSON answer; returns write(event) which sends one line at once. */
export function ndjson(res) {
  res.writeHead(200, { "Content-Type": "application/x-ndjson" });
  res.flushHeaders();
  let seq = 0;
  return (event) => {
    seq += 1;
    res.write(JSON.stringify({ seq, ts: new Date().toISOString(), ...event }) + "\n");
  };
}

/** A sandbox object like hostd's. */
export function sandboxInfo(id, extra = {}) {
  return {
    id,
    state: "ready",
    template: "default",
    egress: false,
    egress_mode: "off",
    vcpus: 1,
    memory_mib: 512,
    source: "boot",
    ...extra,
  };
}
