// A sandbox's files: upload and download, as bytes or as streams, never
// buffered whole when a stream is given or asked for.

import { InvalidRequestError, ProtocolError, isObject } from "./errors.js";
import { type Answer, type RequestBody, type Transport } from "./http.js";

/** What `files.write` takes: text (written as UTF-8), bytes, a Blob, or a stream of chunks. */
export type FileData =
  | string
  | Uint8Array
  | ArrayBuffer
  | ArrayBufferView
  | Blob
  | ReadableStream<Uint8Array>
  | AsyncIterable<Uint8Array | string>;

export interface WriteOptions {
  /** The file's permission bits, e.g. 0o755 (default 0o644). */
  mode?: number;
}

/** hostd's answer to an upload. */
export interface WriteInfo {
  path: string;
  size: number;
}

/** @internal What the files API needs of its sandbox. */
export interface FileHost {
  readonly transport: Transport;
  readonly id: string;
  /** Throws SandboxClosedError if the sandbox was closed or frozen. */
  checkOpen(doing: string): void;
}

export class SandboxFiles {
  /** @internal */
  constructor(private readonly host: FileHost) {}

  /**
   * Write `data` to `path` (absolute) in the sandbox, making parent folders;
   * the file appears whole or not at all (hostd renames it into place). A
   * stream is sent as it is read, chunk by chunk.
   */
  async write(path: string, data: FileData, options: WriteOptions = {}): Promise<WriteInfo> {
    this.host.checkOpen("upload to");
    const query: Record<string, string> = { path: checkPath(path) };
    if (options.mode !== undefined) {
      const mode = options.mode;
      if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) {
        throw new InvalidRequestError(`mode must be permission bits like 0o644, not ${String(mode)}`);
      }
      query["mode"] = mode.toString(8).padStart(4, "0");
    }
    const answer = await this.host.transport.request("PUT", this.filesPath(), {
      query,
      body: bodyOf(data),
      headers: { "Content-Type": "application/octet-stream", Accept: "application/json" },
      what: `uploading ${path} to ${this.host.id}`,
    });
    const doc = this.host.transport.decodeJson(await answer.bytes(), `uploading ${path}`);
    if (!isObject(doc) || typeof doc["path"] !== "string") {
      throw new ProtocolError(`hostd answered the upload of ${path} with ${JSON.stringify(doc)}`);
    }
    return { path: doc["path"], size: Number(doc["size"] ?? 0) };
  }

  /** The bytes of the file at `path` (absolute) in the sandbox. */
  async read(path: string): Promise<Uint8Array> {
    return (await this.open(path)).bytes();
  }

  /** The file at `path` decoded as UTF-8 (undecodable bytes replaced). */
  async readText(path: string): Promise<string> {
    return new TextDecoder().decode(await this.read(path));
  }

  /**
   * The file at `path` as a stream of chunks, read from hostd as it is
   * consumed (in Node, `Readable.fromWeb(stream)` makes it a Node stream).
   * A missing file rejects here, before any chunk.
   */
  async readStream(path: string): Promise<ReadableStream<Uint8Array>> {
    return (await this.open(path)).stream();
  }

  private async open(path: string): Promise<Answer> {
    this.host.checkOpen("download from");
    return this.host.transport.request("GET", this.filesPath(), {
      query: { path: checkPath(path) },
      headers: { Accept: "application/octet-stream" },
      what: `downloading ${path} from ${this.host.id}`,
    });
  }

  private filesPath(): string {
    return `/v1/sandboxes/${encodeURIComponent(this.host.id)}/files`;
  }
}

function checkPath(path: string): string {
  if (typeof path !== "string" || !path.startsWith("/")) {
    throw new InvalidRequestError(`a sandbox path must be absolute (start with /), not ${JSON.stringify(path)}`);
  }
  return path;
}

function bodyOf(data: FileData): RequestBody {
  if (typeof data === "string") return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (typeof Blob !== "undefined" && data instanceof Blob) return chunksOf(data.stream());
  if (data instanceof ReadableStream) return chunksOf(data);
  if (isObject(data) && typeof (data as AsyncIterable<unknown>)[Symbol.asyncIterator] === "function") {
    return chunksOf(data as AsyncIterable<Uint8Array | string>);
  }
  throw new InvalidRequestError(
    `file data must be a string, bytes (Uint8Array, ArrayBuffer), a Blob, a ReadableStream or an ` +
      `async iterable of chunks (a Node Readable), not ${describeType(data)}`,
  );
}

// The chunks of a web stream or an async iterable, as bytes; a string chunk
// (a Node stream with an encoding set) is sent as UTF-8.
async function* chunksOf(
  source: ReadableStream<Uint8Array> | AsyncIterable<Uint8Array | string>,
): AsyncGenerator<Uint8Array, void, undefined> {
  if (source instanceof ReadableStream) {
    const reader = source.getReader();
    try {
      while (true) {
        const step = await reader.read();
        if (step.done) return;
        yield chunkBytes(step.value);
      }
    } finally {
      reader.releaseLock();
    }
  } else {
    for await (const chunk of source) yield chunkBytes(chunk);
  }
}

function chunkBytes(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  if (typeof chunk === "string") return new TextEncoder().encode(chunk);
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  throw new InvalidRequestError(`a file stream must yield bytes (Uint8Array) or strings, not ${describeType(chunk)}`);
}

function describeType(value: unknown): string {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return (value as object).constructor?.name ?? "an object";
}
