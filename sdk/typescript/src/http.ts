// The one HTTP layer every SDK call goes through.
//
// It owns the Authorization header, the idle timeout (how long hostd may
// stay silent: before its answer, and between the answer's bytes), and the
// translation of every failure -- an error answer, a refused connection, a
// connection that broke mid-stream -- into a typed VesicleError, so no bare
// `TypeError: fetch failed` reaches a caller for a failure that can be
// expected. Connections are kept alive by the runtime's fetch.

import { type Config } from "./config.js";
import {
  ProtocolError,
  VesicleConnectionError,
  VesicleError,
  VesicleTimeoutError,
  errorFromResponse,
  isObject,
} from "./errors.js";
import { VERSION } from "./version.js";

export const USER_AGENT = `vesicle-typescript/${VERSION}`;

// Error bodies are small JSON documents; cap what is read of one so a broken
// server cannot make the client buffer without bound.
const MAX_ERROR_BODY = 64 * 1024;
// One NDJSON line may not take more memory than this.
const MAX_LINE = 64 * 1024 * 1024;

const RESENDABLE = new Set(["GET", "HEAD", "PUT", "DELETE"]);
const STALE_CONNECTION = new Set(["UND_ERR_SOCKET", "ECONNRESET", "EPIPE"]);

export type RequestBody = Uint8Array | AsyncIterable<Uint8Array>;

export interface RequestOptions {
  query?: Record<string, string>;
  /** JSON-encoded and sent with Content-Type application/json. */
  json?: unknown;
  /** Raw bytes (sent with a Content-Length) or chunks (sent chunked, read as they are sent). */
  body?: RequestBody;
  headers?: Record<string, string>;
  /** Send the API key (default true; health needs none). */
  auth?: boolean;
  /** Idle timeout for this call: undefined is the config's, null none (a silent cell may run for hours). */
  timeoutMs?: number | null;
  /** What the call does, for messages: "creating a sandbox". */
  what: string;
}

export class Transport {
  constructor(readonly config: Config) {}

  /** Send a request and return the decoded JSON answer; an empty body (a 204) is {}. */
  async json(method: string, path: string, options: RequestOptions): Promise<unknown> {
    const answer = await this.request(method, path, {
      ...options,
      headers: { Accept: "application/json", ...options.headers },
    });
    return this.decodeJson(await answer.bytes(), options.what);
  }

  decodeJson(data: Uint8Array, what: string): unknown {
    try {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(data);
      return text.trim() ? JSON.parse(text) : {};
    } catch (err) {
      throw new ProtocolError(
        `hostd at ${this.config.url} answered ${what} with a body that is not JSON ` +
          `(${(err as Error).message}); is something other than hostd listening there?`,
      );
    }
  }

  /**
   * Send a request; resolves once hostd's answer has started with a 2xx
   * status (an error status is read and thrown as its typed error).
   */
  async request(method: string, path: string, options: RequestOptions): Promise<Answer> {
    const url = this.target(path, options.query);
    const headers: Record<string, string> = { "User-Agent": USER_AGENT, ...options.headers };
    if (options.auth !== false && this.config.apiKey) {
      headers["Authorization"] = `Bearer ${this.config.apiKey}`;
    }
    const timeoutMs = options.timeoutMs === undefined ? this.config.timeoutMs : options.timeoutMs;
    const timer = new IdleTimer(timeoutMs);
    const init: RequestInit & { duplex?: "half" } = { method, headers, signal: timer.signal };
    let sourceError: { error: unknown } | undefined;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.json);
    } else if (options.body instanceof Uint8Array) {
      init.body = options.body;
    } else if (options.body !== undefined) {
      init.body = streamOf(options.body, timer, (error) => {
        sourceError = { error };
      });
      init.duplex = "half"; // required by fetch for a streamed request body
    }
    // A kept-alive connection hostd closed while idle (its request timeout)
    // fails a request written to it before hostd read a byte. A request that
    // is safe to send twice (idempotent, its body at hand) is resent once.
    const resendable = RESENDABLE.has(method) && !(init.body instanceof ReadableStream);
    let response: Response;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await this.config.fetch(url, init);
        break;
      } catch (err) {
        // The caller's own upload stream failing is theirs to see as it was.
        if (sourceError !== undefined) {
          timer.stop();
          throw sourceError.error;
        }
        if (attempt === 0 && resendable && !timer.fired && STALE_CONNECTION.has(errorCode(err) ?? "")) continue;
        timer.stop();
        throw this.connectionError(err, options.what, timer);
      }
    }
    const answer = new Answer(this, response, timer, options.what);
    if (response.status >= 200 && response.status < 300) return answer;
    const body = await answer.bytes(MAX_ERROR_BODY);
    throw errorFromResponse(response.status, response.statusText, body);
  }

  private target(path: string, query?: Record<string, string>): string {
    let url = this.config.url + path;
    if (query && Object.keys(query).length > 0) url += "?" + new URLSearchParams(query).toString();
    return url;
  }

  /** The typed error for a failed fetch or body read. */
  connectionError(err: unknown, what: string, timer: IdleTimer): VesicleError {
    const url = this.config.url;
    if (err instanceof VesicleError) return err;
    if (timer.fired) {
      return new VesicleTimeoutError(
        `hostd at ${url} sent nothing for ${(timer.ms ?? 0) / 1000} s while ${what}: it may be overloaded ` +
          `(pass a larger timeoutMs) or stuck`,
        { cause: err },
      );
    }
    const code = errorCode(err);
    if (code === "ECONNREFUSED") {
      return new VesicleConnectionError(
        `cannot connect to hostd at ${url} (connection refused) while ${what}: is hostd running? ` +
          `Start it, or set VESICLE_URL (or the url option) to the address it listens on`,
        { cause: err },
      );
    }
    if (code === "ENOTFOUND" || code === "EAI_AGAIN") {
      return new VesicleConnectionError(
        `cannot resolve the host of the hostd URL ${url} (${code}); check VESICLE_URL or the url option`,
        { cause: err },
      );
    }
    if (code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT") {
      // Node's built-in fetch (undici) gives up after 300 s of silence, whatever we ask.
      return new VesicleTimeoutError(
        `the runtime's fetch gave up on hostd at ${url} after its own idle limit (${code}) while ${what}; ` +
          `for longer silent calls pass a fetch with a longer timeout (the fetch option)`,
        { cause: err },
      );
    }
    if (code === "UND_ERR_SOCKET" || code === "ECONNRESET" || code === "EPIPE" || code === "UND_ERR_CLOSED") {
      return new VesicleConnectionError(
        `the connection to hostd at ${url} closed in the middle of ${what}; ` +
          `check that hostd is still running (and its log)`,
        { cause: err },
      );
    }
    const detail = describe(err);
    return new VesicleConnectionError(`the connection to hostd at ${url} failed while ${what}: ${detail}`, {
      cause: err,
    });
  }
}

/** A 2xx answer being read. Reading it to its end (or cancel()) releases the connection. */
export class Answer {
  constructor(
    private readonly transport: Transport,
    readonly response: Response,
    private readonly timer: IdleTimer,
    private readonly what: string,
  ) {}

  get status(): number {
    return this.response.status;
  }

  /** The body's pieces as they arrive; each one restarts the idle timeout. */
  async *chunks(): AsyncGenerator<Uint8Array, void, undefined> {
    const body = this.response.body;
    if (body === null) {
      this.timer.stop();
      return;
    }
    const reader = body.getReader();
    let done = false;
    try {
      while (true) {
        const step = await reader.read().catch((err: unknown) => {
          throw this.transport.connectionError(err, this.what, this.timer);
        });
        if (step.done) break;
        this.timer.touch();
        if (step.value.byteLength > 0) yield step.value;
      }
      done = true;
    } finally {
      this.timer.stop();
      if (!done) {
        // Stopped early (a limit, a consumer's break or error): drop the rest.
        reader.cancel().catch(() => undefined);
      }
      reader.releaseLock();
    }
  }

  /** The whole body (or its first `limit` bytes). */
  async bytes(limit?: number): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let total = 0;
    for await (const chunk of this.chunks()) {
      parts.push(chunk);
      total += chunk.byteLength;
      if (limit !== undefined && total >= limit) break;
    }
    return concat(parts, total);
  }

  /**
   * The body split at "\n", each line (without it) as soon as it is
   * complete; a last line without a newline too.
   */
  async *lines(): AsyncGenerator<Uint8Array, void, undefined> {
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    for await (const chunk of this.chunks()) {
      let start = 0;
      while (true) {
        const nl = chunk.indexOf(0x0a, start);
        if (nl < 0) break;
        const piece = chunk.subarray(start, nl);
        if (pendingBytes > 0) {
          pending.push(piece);
          yield concat(pending, pendingBytes + piece.byteLength);
          pending = [];
          pendingBytes = 0;
        } else {
          yield piece;
        }
        start = nl + 1;
      }
      if (start < chunk.byteLength) {
        // Copied: the reader may reuse the chunk's buffer.
        pending.push(chunk.slice(start));
        pendingBytes += chunk.byteLength - start;
        if (pendingBytes > MAX_LINE) {
          throw new ProtocolError(
            `hostd sent a line over ${MAX_LINE} bytes while ${this.what}; this breaks the NDJSON stream contract`,
          );
        }
      }
    }
    if (pendingBytes > 0) yield concat(pending, pendingBytes);
  }

  /** The body as a web ReadableStream whose errors are the SDK's typed ones. */
  stream(): ReadableStream<Uint8Array> {
    const chunks = this.chunks();
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          const step = await chunks.next();
          if (step.done) controller.close();
          else controller.enqueue(step.value);
        } catch (err) {
          controller.error(err);
        }
      },
      async cancel() {
        await chunks.return(undefined);
      },
    });
  }

  /** Drop the answer unread. */
  async cancel(): Promise<void> {
    this.timer.stop();
    await this.response.body?.cancel().catch(() => undefined);
  }
}

/**
 * Aborts a fetch when hostd stays silent for `ms`: armed at the request,
 * restarted by every chunk sent or received, stopped at the end.
 */
export class IdleTimer {
  private readonly controller = new AbortController();
  private handle: ReturnType<typeof setTimeout> | undefined;
  fired = false;

  constructor(readonly ms: number | null) {
    this.touch();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  touch(): void {
    if (this.ms === null || this.fired) return;
    if (this.handle !== undefined) clearTimeout(this.handle);
    this.handle = setTimeout(() => {
      this.fired = true;
      this.controller.abort();
    }, this.ms);
    // The request itself keeps Node running; its timer alone (say, for a
    // download stream the caller dropped) must not.
    (this.handle as { unref?: () => void }).unref?.();
  }

  stop(): void {
    if (this.handle !== undefined) clearTimeout(this.handle);
    this.handle = undefined;
  }
}

/** A request body stream from chunks, restarting the idle timer as each is sent. */
function streamOf(
  source: AsyncIterable<Uint8Array>,
  timer: IdleTimer,
  onError: (error: unknown) => void,
): ReadableStream<Uint8Array> {
  const iterator = source[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let step: IteratorResult<Uint8Array>;
      try {
        step = await iterator.next();
      } catch (err) {
        onError(err);
        controller.error(err);
        return;
      }
      timer.touch();
      if (step.done) controller.close();
      else controller.enqueue(step.value);
    },
    async cancel() {
      await iterator.return?.();
    },
  });
}

export function concat(parts: Uint8Array[], total?: number): Uint8Array {
  if (parts.length === 1 && parts[0] !== undefined) return parts[0];
  const size = total ?? parts.reduce((n, p) => n + p.byteLength, 0);
  const out = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

// The system error code behind a fetch failure: Node's fetch throws a
// TypeError whose cause (or, with several addresses, the cause's errors)
// carries it.
function errorCode(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  let current: unknown = err;
  while (isErrorLike(current) && !seen.has(current)) {
    seen.add(current);
    if (typeof current["code"] === "string") return current["code"];
    const nested = current["errors"];
    if (Array.isArray(nested) && nested.length > 0) {
      const inner = errorCode(nested[0]);
      if (inner !== undefined) return inner;
    }
    current = current["cause"];
  }
  return undefined;
}

function isErrorLike(value: unknown): value is Record<string, unknown> {
  return isObject(value) || value instanceof Error;
}

function describe(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; depth < 4 && current !== undefined && current !== null; depth++) {
    parts.push(current instanceof Error ? current.message || current.name : String(current));
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join(": ") || "unknown error";
}
