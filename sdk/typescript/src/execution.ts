// What one runCode call produced, and the reader of the exec NDJSON stream.

import { ProtocolError, VesicleError, errorForCode, isObject } from "./errors.js";
import { concat } from "./http.js";

export type TextCallback = (chunk: string) => unknown;
export type ResultCallback = (result: Result) => unknown;

/** A Python exception raised by the cell: its class name, str() and formatted traceback. */
export class ExecutionError {
  constructor(
    readonly name: string,
    readonly value: string,
    readonly traceback: string,
  ) {}

  toString(): string {
    return this.value ? `${this.name}: ${this.value}` : this.name;
  }
}

// The short names of Result.formats(), by MIME type.
const FORMAT_NAMES: Record<string, string> = {
  "text/plain": "text",
  "text/html": "html",
  "text/markdown": "markdown",
  "text/latex": "latex",
  "image/png": "png",
  "image/jpeg": "jpeg",
  "image/svg+xml": "svg",
  "application/json": "json",
  "application/javascript": "javascript",
  "application/pdf": "pdf",
};

// Formats that are bytes: hostd sends them base64 in the event's data_b64.
// One found as a string in `data` is taken as base64 too (image bytes are
// never UTF-8 text, so that string can only be their base64).
const BINARY_FORMATS = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf"]);

/**
 * One display output of a Python cell (a matplotlib figure, a DataFrame's
 * table, a `display()` call): one thing in one or more formats, a MIME
 * bundle. `png`, `jpeg` and `pdf` are bytes; `text`, `html`, `markdown`,
 * `latex`, `svg` and `javascript` are strings; `json` is the parsed JSON
 * value. Each is undefined when the output lacks that format. `data` maps
 * every MIME type to its data (bytes, or a string for text types).
 * `isMainResult` marks the trailing expression's rich output, whose `text`
 * equals the Execution's `result`.
 */
export class Result {
  readonly data: Readonly<Record<string, string | Uint8Array>>;
  readonly isMainResult: boolean;

  constructor(data: Record<string, string | Uint8Array>, isMainResult = false) {
    this.data = Object.freeze({ ...data });
    this.isMainResult = isMainResult;
  }

  /** text/plain: the object's repr */
  get text(): string | undefined {
    return this.textOf("text/plain");
  }
  /** text/html (a DataFrame's <table>) */
  get html(): string | undefined {
    return this.textOf("text/html");
  }
  get markdown(): string | undefined {
    return this.textOf("text/markdown");
  }
  get latex(): string | undefined {
    return this.textOf("text/latex");
  }
  /** image/svg+xml */
  get svg(): string | undefined {
    return this.textOf("image/svg+xml");
  }
  get javascript(): string | undefined {
    return this.textOf("application/javascript");
  }
  /** image/png bytes (a matplotlib figure) */
  get png(): Uint8Array | undefined {
    return this.bytesOf("image/png");
  }
  get jpeg(): Uint8Array | undefined {
    return this.bytesOf("image/jpeg");
  }
  get pdf(): Uint8Array | undefined {
    return this.bytesOf("application/pdf");
  }

  /** application/json, parsed; undefined when there is none. */
  get json(): unknown {
    const raw = this.textOf("application/json");
    if (raw === undefined) return undefined;
    try {
      return JSON.parse(raw);
    } catch (err) {
      throw new ProtocolError(`the cell's application/json output is not valid JSON: ${(err as Error).message}`);
    }
  }

  /** The formats this output has: short names ("png", "html", "text", ...) or else MIME types. */
  formats(): string[] {
    return Object.keys(this.data).map((mime) => FORMAT_NAMES[mime] ?? mime);
  }

  private textOf(mime: string): string | undefined {
    const value = this.data[mime];
    return value instanceof Uint8Array ? new TextDecoder().decode(value) : value;
  }

  private bytesOf(mime: string): Uint8Array | undefined {
    const value = this.data[mime];
    return typeof value === "string" ? new TextEncoder().encode(value) : value;
  }
}

type Stream = "stdout" | "stderr";

/**
 * The outcome of one runCode call.
 *
 * `stdout`/`stderr` are the UTF-8 decoding (undecodable bytes replaced) of
 * the exact bytes the code wrote (`stdoutBytes`, `stderrBytes`). `result`
 * is repr() of a Python cell's trailing expression, `error` the exception
 * it raised, `results` its display outputs (figures, tables) in order.
 * `exitCode` is bash's exit status (for Python, what the REPL reports).
 * `timedOut` says the timeout interrupted the code, `replRestarted` that the
 * REPL had to be restarted (its variables are gone), `truncated` that hostd
 * dropped output over its cap.
 */
export class Execution {
  // Output in arrival order, so `text` can interleave the two streams as a
  // terminal would have shown them.
  private readonly chunks: Array<[Stream, Uint8Array]> = [];
  private readonly joined = new Map<Stream, Uint8Array>();
  result: string | undefined = undefined;
  error: ExecutionError | undefined = undefined;
  readonly results: Result[] = [];
  exitCode = 0;
  signal = 0;
  timedOut = false;
  truncated = false;
  replRestarted = false;
  durationMs = 0;

  /** @internal */
  append(stream: Stream, data: Uint8Array): void {
    this.chunks.push([stream, data]);
    this.joined.delete(stream);
  }

  private bytesOf(stream: Stream): Uint8Array {
    let cached = this.joined.get(stream);
    if (cached === undefined) {
      cached = concat(this.chunks.filter(([s]) => s === stream).map(([, d]) => d));
      this.joined.set(stream, cached);
    }
    return cached;
  }

  get stdoutBytes(): Uint8Array {
    return this.bytesOf("stdout");
  }

  get stderrBytes(): Uint8Array {
    return this.bytesOf("stderr");
  }

  get stdout(): string {
    return new TextDecoder().decode(this.stdoutBytes);
  }

  get stderr(): string {
    return new TextDecoder().decode(this.stderrBytes);
  }

  /** Everything a notebook would show: output as it interleaved, the result, the traceback. */
  get text(): string {
    const decoders = { stdout: new TextDecoder(), stderr: new TextDecoder() };
    let out = this.chunks.map(([s, d]) => decoders[s].decode(d, { stream: true })).join("");
    out += decoders.stdout.decode() + decoders.stderr.decode();
    const errorText = this.error === undefined ? undefined : this.error.traceback || this.error.toString();
    for (const extra of [this.result, errorText]) {
      if (extra === undefined) continue;
      if (out && !out.endsWith("\n")) out += "\n";
      out += extra;
    }
    return out;
  }
}

/**
 * Reads the NDJSON events of one exec into an Execution, calling back as
 * output arrives. Feed it the lines in order, then call finish(), which
 * returns the Execution or throws: the server's typed error when the exit
 * event carries a `failure`, a ProtocolError when the stream broke its
 * contract. Callbacks get text decoded incrementally, so a character split
 * across events is delivered whole, and their concatenation equals the
 * final stdout/stderr.
 */
export class ExecStream {
  readonly execution = new Execution();
  private readonly callbacks: Record<Stream, TextCallback | undefined>;
  private readonly decoders: Record<Stream, InstanceType<typeof TextDecoder>> = {
    stdout: new TextDecoder(),
    stderr: new TextDecoder(),
  };
  private exited = false;
  private failure: VesicleError | undefined;
  private lineNo = 0;

  constructor(
    onStdout?: TextCallback,
    onStderr?: TextCallback,
    private readonly onResult?: ResultCallback,
  ) {
    this.callbacks = { stdout: onStdout, stderr: onStderr };
  }

  async feed(line: Uint8Array): Promise<void> {
    this.lineNo += 1;
    const text = new TextDecoder().decode(line);
    if (!text.trim()) return;
    let event: unknown;
    try {
      event = JSON.parse(text);
    } catch (err) {
      throw new ProtocolError(
        `hostd sent a malformed exec event (line ${this.lineNo}: ${(err as Error).message}): ${text.slice(0, 120)}`,
      );
    }
    if (!isObject(event) || typeof event["type"] !== "string") {
      throw new ProtocolError(`hostd sent an exec event without a type (line ${this.lineNo}): ${text.slice(0, 120)}`);
    }
    const kind = event["type"];
    if (this.exited) {
      throw new ProtocolError(`hostd sent a "${kind}" event after the exit event (line ${this.lineNo})`);
    }
    switch (kind) {
      case "stdout":
      case "stderr":
        await this.output(kind, event);
        break;
      case "result":
        this.execution.result = textField(event, "data", "result");
        break;
      case "error":
        this.execution.error = new ExecutionError(
          textField(event, "name", "error"),
          textField(event, "value", "error", ""),
          textField(event, "traceback", "error", ""),
        );
        break;
      case "display":
        await this.display(event);
        break;
      case "exit":
        this.exit(event);
        break;
      default:
      // Other types are newer than this SDK; skipping them keeps it working.
    }
  }

  private async output(stream: Stream, event: Record<string, unknown>): Promise<void> {
    let data: Uint8Array;
    const encoded = event["data_b64"];
    if (encoded !== undefined && encoded !== null) {
      if (typeof encoded !== "string") {
        throw new ProtocolError(`hostd sent a ${stream} event whose data_b64 is not a string`);
      }
      const decoded = fromBase64(encoded);
      if (decoded === undefined) {
        throw new ProtocolError(`hostd sent a ${stream} event whose data_b64 is not base64`);
      }
      data = decoded;
    } else {
      data = new TextEncoder().encode(textField(event, "data", stream));
    }
    if (data.byteLength === 0) return;
    this.execution.append(stream, data);
    const callback = this.callbacks[stream];
    if (callback !== undefined) {
      const chunk = this.decoders[stream].decode(data, { stream: true });
      if (chunk) await callback(chunk);
    }
  }

  // Text types arrive as text in "data", the rest base64 in "data_b64";
  // the Result has them merged.
  private async display(event: Record<string, unknown>): Promise<void> {
    const bundle: Record<string, string | Uint8Array> = {};
    for (const field of ["data", "data_b64"] as const) {
      const entries = event[field];
      if (entries === undefined || entries === null) continue;
      if (!isObject(entries)) throw new ProtocolError(`hostd sent a display event whose "${field}" is not an object`);
      for (const [mime, value] of Object.entries(entries)) {
        if (field === "data" && mime === "application/json" && typeof value !== "string") {
          bundle[mime] = JSON.stringify(value); // a JSON value sent as such rather than as its text
          continue;
        }
        if (typeof value !== "string") {
          throw new ProtocolError(`hostd sent a display event whose ${mime} is not a string`);
        }
        if (field === "data" && !BINARY_FORMATS.has(mime)) {
          bundle[mime] = value;
          continue;
        }
        const bytes = fromBase64(value.replace(/\s+/g, ""));
        if (bytes === undefined) {
          throw new ProtocolError(`hostd sent a display event whose ${mime} in ${field} is not base64`);
        }
        bundle[mime] = bytes;
      }
    }
    const result = new Result(bundle, event["is_main_result"] === true);
    this.execution.results.push(result);
    if (this.onResult !== undefined) await this.onResult(result);
  }

  private exit(event: Record<string, unknown>): void {
    const ex = this.execution;
    this.exited = true;
    ex.exitCode = intField(event, "exit_code");
    ex.signal = intField(event, "signal");
    ex.durationMs = intField(event, "duration_ms");
    ex.timedOut = Boolean(event["timed_out"]);
    ex.truncated = Boolean(event["truncated"]);
    ex.replRestarted = Boolean(event["repl_restarted"]);
    const failure = event["failure"];
    if (failure) {
      if (!isObject(failure)) throw new ProtocolError("hostd sent an exit event whose failure is not an object");
      const code = typeof failure["code"] === "string" ? failure["code"] : "internal";
      const message = typeof failure["message"] === "string" ? failure["message"] : "";
      const err = errorForCode(code, message || `the exec failed (${code})`);
      err.execution = ex; // what the code produced before it failed
      this.failure = err;
    }
  }

  async finish(): Promise<Execution> {
    for (const stream of ["stdout", "stderr"] as const) {
      const tail = this.decoders[stream].decode();
      const callback = this.callbacks[stream];
      if (tail && callback !== undefined) await callback(tail);
    }
    if (this.failure !== undefined) throw this.failure;
    if (!this.exited) {
      throw new ProtocolError(
        "the exec stream ended without an exit event: hostd closed it early; " +
          "check that hostd is still running and the sandbox's state",
      );
    }
    return this.execution;
  }
}

function textField(event: Record<string, unknown>, name: string, kind: string, fallback?: string): string {
  const value = event[name] ?? fallback;
  if (typeof value !== "string") {
    throw new ProtocolError(`hostd sent a ${kind} event whose "${name}" is not a string`);
  }
  return value;
}

function intField(event: Record<string, unknown>, name: string): number {
  const value = event[name] ?? 0;
  // The JSON mapping may print 64-bit integers as strings.
  if (typeof value === "string" && /^-?\d+$/.test(value)) return Number(value);
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new ProtocolError(`hostd sent an exit event whose "${name}" is not an integer`);
  }
  return value;
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict standard base64 (padded) to bytes; undefined if it is not that. */
export function fromBase64(text: string): Uint8Array | undefined {
  if (!BASE64.test(text)) return undefined;
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}
