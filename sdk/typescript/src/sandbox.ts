// A sandbox: one microVM with a persistent Python REPL, bash and a filesystem.

import { type Config, type ConnectionOptions, requireKey, resolveConfig } from "./config.js";
import { InvalidRequestError, NotFoundError, ProtocolError, SandboxClosedError, isObject } from "./errors.js";
import { ExecStream, type Execution, type ResultCallback, type TextCallback } from "./execution.js";
import { SandboxFiles } from "./files.js";
import { Transport } from "./http.js";
import { Space, spaceIdOf, spacePath, spacesFromList } from "./space.js";

// A freeze writes the VM's memory to disk and a resume reads it back; under
// TCG with a large guest either can take minutes without a byte on the wire,
// so they wait at least this long for hostd's answer.
const SPACE_OP_TIMEOUT_MS = 300_000;
const MAX_FORK = 32;

/** What a new sandbox should be; hostd fills in (and clamps to the key's tier) what is left out. */
export interface SandboxOptions extends ConnectionOptions {
  /** The template (image) name; default hostd's default. */
  template?: string;
  vcpus?: number;
  /** The guest's RAM. */
  memoryMib?: number;
  /** What the root filesystem may take, the image's ~400 MiB included. */
  diskMib?: number;
  /** Network egress on (open) or off; with `egressAllow`, only those names. */
  egress?: boolean;
  /** Domain names an egress sandbox may reach ("pypi.org", "*.example.com"). */
  egressAllow?: string[];
  /** Seconds without an exec or transfer before hostd ends (or, persistent, freezes) it; 0: the tier's longest. */
  idleTimeoutS?: number;
  /** Seconds from create after which hostd ends (or, persistent, freezes) it; 0: the tier's longest. */
  maxLifetimeS?: number;
  /** Frozen into a Space instead of destroyed at its idle timeout, lifetime, or hostd's stop. */
  persistent?: boolean;
  region?: string;
}

// Option name -> the create request's field.
const CREATE_FIELDS: Record<string, string> = {
  template: "template",
  vcpus: "vcpus",
  memoryMib: "memory_mib",
  diskMib: "disk_mib",
  egress: "egress",
  egressAllow: "egress_allow",
  idleTimeoutS: "idle_timeout_s",
  maxLifetimeS: "max_lifetime_s",
  persistent: "persistent",
  region: "region",
};
const CONNECTION_FIELDS = ["url", "apiKey", "timeoutMs", "fetch"];

export interface ResumeOptions extends ConnectionOptions {
  /** Freeze the resumed sandbox again when idle (default false: destroyed, like any sandbox). */
  persistent?: boolean;
}

export type Language = "python" | "bash";

export interface RunCodeOptions {
  /** "python" (default): the sandbox's one persistent REPL; "bash": a command in the same machine. */
  language?: Language;
  /** Called with stdout text as it is produced. */
  onStdout?: TextCallback;
  /** Called with stderr text as it is produced. */
  onStderr?: TextCallback;
  /** Called with each display output (a figure, a table) as it arrives; all are in `results` too. */
  onResult?: ResultCallback;
  /** Interrupt the code after this long (rounded up to whole seconds); the Execution says timedOut. */
  timeoutMs?: number;
  /** Environment variables (bash only). */
  env?: Record<string, string>;
  /** Working directory (bash only; default /root). */
  cwd?: string;
}

export interface ForkOptions {
  /** How many children, 1 to 32 (default 1). */
  n?: number;
}

/** hostd's sandbox object, as sent (snake_case, as in the REST API). */
export interface SandboxInfo {
  id: string;
  /** "booting", "ready", "dead" or "frozen" */
  state?: string;
  template?: string;
  egress?: boolean;
  egress_allow?: string[];
  egress_mode?: string;
  persistent?: boolean;
  vcpus?: number;
  memory_mib?: number;
  disk_mib?: number;
  idle_timeout_s?: number;
  max_lifetime_s?: number;
  created_at?: string;
  accel?: string;
  dead_reason?: string;
  /** While hostd holds the VM paused (the host's disk is full): why; "" while it runs */
  paused?: string;
  /** "pool", "restore", "boot", "fork" or "space" */
  source?: string;
  forked_from?: string;
  space_id?: string;
  resumed_from?: string;
  [field: string]: unknown;
}

/**
 * A sandbox on a vesicle host.
 *
 * `await Sandbox.create({...})` makes one and resolves when it is ready;
 * `Sandbox.connect(id)` attaches to an existing one, `Sandbox.list()` lists
 * the key's. `close()` destroys it. `freeze()` saves it to disk as a Space;
 * `Sandbox.resume(spaceId)` brings a Space back as a new sandbox.
 * Connection options default to $VESICLE_URL (else http://127.0.0.1:7070)
 * and $VESICLE_API_KEY.
 */
export class Sandbox {
  readonly id: string;
  /** hostd's sandbox object as of the last answer (see refresh()). */
  info: SandboxInfo;
  /** Upload and download files. */
  readonly files: SandboxFiles;
  /** @internal */
  readonly transport: Transport;
  private isClosed = false;
  private frozenInto: Space | undefined; // what freeze() made

  private constructor(transport: Transport, info: unknown) {
    if (!isObject(info) || typeof info["id"] !== "string" || !info["id"]) {
      throw new ProtocolError(`hostd answered with a sandbox object without an id: ${JSON.stringify(info)}`);
    }
    this.transport = transport;
    this.id = info["id"];
    this.info = info as SandboxInfo;
    this.files = new SandboxFiles({
      transport,
      id: this.id,
      checkOpen: (doing: string) => this.checkOpen(doing),
    });
  }

  /** @internal A Sandbox object for hostd's description of one. */
  static fromInfo(transport: Transport, info: unknown): Sandbox {
    return new Sandbox(transport, info);
  }

  /** Create a sandbox; resolves when its VM is ready. Only the options given are sent. */
  static async create(options: SandboxOptions = {}): Promise<Sandbox> {
    const body: Record<string, unknown> = {};
    for (const [name, value] of Object.entries(options)) {
      const field = CREATE_FIELDS[name];
      if (field === undefined) {
        if (CONNECTION_FIELDS.includes(name)) continue;
        throw new InvalidRequestError(
          `unknown Sandbox.create option "${name}"; the options are ${[
            ...Object.keys(CREATE_FIELDS),
            ...CONNECTION_FIELDS,
          ].join(", ")}`,
        );
      }
      if (value !== undefined) body[field] = value;
    }
    const allow = options.egressAllow;
    if (allow !== undefined && (!Array.isArray(allow) || !allow.every((d) => typeof d === "string"))) {
      // A bare string would be rejected by hostd; the caller almost surely meant a one-name list.
      throw new InvalidRequestError(
        `egressAllow must be an array of domain names, e.g. [${JSON.stringify(String(allow))}]`,
      );
    }
    const transport = new Transport(resolveConfig(options));
    requireKey(transport.config);
    const info = await transport.json("POST", "/v1/sandboxes", { json: body, what: "creating a sandbox" });
    return new Sandbox(transport, info);
  }

  /** Attach to an existing sandbox (NotFoundError if the key has no such sandbox). */
  static async connect(sandboxId: string, options: ConnectionOptions = {}): Promise<Sandbox> {
    const transport = new Transport(resolveConfig(options));
    const info = await transport.json("GET", sandboxPath(sandboxId), { what: `looking up ${sandboxId}` });
    return new Sandbox(transport, info);
  }

  /**
   * Bring a Space back as a new sandbox (a new id); resolves when it is ready.
   *
   * It continues where the frozen one stopped: Python globals, running
   * processes, files; `resumedFrom` names the Space. The Space is used up:
   * resuming it again is a NotFoundError. A Space whose files fail their
   * checks throws SpaceCorruptedError (and is kept); one another resume is
   * restoring, ConflictError.
   */
  static async resume(space: Space | string, options: ResumeOptions = {}): Promise<Sandbox> {
    return Sandbox.resumeWith(new Transport(resolveConfig(options)), space, options.persistent ?? false);
  }

  /** @internal */
  static async resumeWith(transport: Transport, space: Space | string, persistent: boolean): Promise<Sandbox> {
    requireKey(transport.config);
    if (typeof persistent !== "boolean") {
      throw new InvalidRequestError(`persistent must be true or false, not ${JSON.stringify(persistent)}`);
    }
    const id = spaceIdOf(space);
    const info = await transport.json("POST", spacePath(id) + "/resume", {
      json: { persistent },
      timeoutMs: Math.max(transport.config.timeoutMs, SPACE_OP_TIMEOUT_MS),
      what: `resuming Space ${id}`,
    });
    return new Sandbox(transport, info);
  }

  /** The API key's sandboxes, each attached (closing one destroys it). */
  static async list(options: ConnectionOptions = {}): Promise<Sandbox[]> {
    return Sandbox.listWith(new Transport(resolveConfig(options)));
  }

  /** @internal */
  static async listWith(transport: Transport): Promise<Sandbox[]> {
    const doc = await transport.json("GET", "/v1/sandboxes", { what: "listing sandboxes" });
    const items = isObject(doc) ? (doc["sandboxes"] ?? []) : undefined;
    if (!Array.isArray(items)) throw new ProtocolError(`hostd answered the sandbox list with ${JSON.stringify(doc)}`);
    return items.map((info) => new Sandbox(transport, info));
  }

  /** The API key's Spaces, oldest first. */
  static async spaces(options: ConnectionOptions = {}): Promise<Space[]> {
    const transport = new Transport(resolveConfig(options));
    return spacesFromList(await transport.json("GET", "/v1/spaces", { what: "listing Spaces" }));
  }

  // ---- state ----------------------------------------------------------------

  /** The configuration this sandbox talks to hostd with. */
  get config(): Config {
    return this.transport.config;
  }

  /** "booting", "ready", "dead" or "frozen" as of the last answer (see refresh()). */
  get state(): string | undefined {
    return this.info.state;
  }

  /** The Space this sandbox was frozen into (state "frozen"), else undefined. */
  get spaceId(): string | undefined {
    return this.info.space_id || undefined;
  }

  /** The Space freeze() made, as hostd described it; undefined before a freeze(). */
  get space(): Space | undefined {
    return this.frozenInto;
  }

  /** The Space this sandbox was resumed from (source "space"), else undefined. */
  get resumedFrom(): string | undefined {
    return this.info.resumed_from || undefined;
  }

  /** The id of the sandbox this one was forked from, else undefined. */
  get forkedFrom(): string | undefined {
    return this.info.forked_from || undefined;
  }

  /** The sandbox's network egress: "open", "off" or "allowlist" (see egressAllow). */
  get egress(): string | undefined {
    if (this.info.egress_mode) return this.info.egress_mode;
    // A hostd that predates egress_mode says only whether egress is on.
    if (this.info.egress === undefined) return undefined;
    if (!this.info.egress) return "off";
    return this.info.egress_allow?.length ? "allowlist" : "open";
  }

  /** The names an "allowlist" sandbox may reach; else []. */
  get egressAllow(): string[] {
    return [...(this.info.egress_allow ?? [])];
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Fetch the sandbox object again; returns (and stores in `info`) the new one. */
  async refresh(): Promise<SandboxInfo> {
    this.checkOpen("refresh", true);
    const info = await this.transport.json("GET", sandboxPath(this.id), { what: `looking up ${this.id}` });
    if (!isObject(info) || info["id"] !== this.id) {
      throw new ProtocolError(`hostd answered a lookup of ${this.id} with ${JSON.stringify(info)}`);
    }
    this.info = info as SandboxInfo;
    return this.info;
  }

  // ---- code -----------------------------------------------------------------

  /**
   * Run code in the sandbox and return what it produced.
   *
   * Python runs in the sandbox's one persistent REPL (globals survive); bash
   * runs the command in the same machine (env and cwd apply to bash only).
   * onStdout and onStderr are called with text as it arrives, onResult with
   * each display output (figures, tables; also in the Execution's `results`). `timeoutMs`
   * interrupts the code; the Execution says timedOut. If the sandbox dies
   * meanwhile, SandboxDiedError (with `.execution`, what came before) is thrown.
   */
  async runCode(code: string, options: RunCodeOptions = {}): Promise<Execution> {
    this.checkOpen("run code in");
    if (typeof code !== "string") throw new InvalidRequestError(`code must be a string, not ${typeof code}`);
    const language = options.language ?? "python";
    if (language !== "python" && language !== "bash") {
      throw new InvalidRequestError(`language must be "python" or "bash", not ${JSON.stringify(language)}`);
    }
    const body: Record<string, unknown> = { code, language };
    let idleMs: number | null = null; // a silent cell may run for hours
    if (options.timeoutMs !== undefined) {
      if (typeof options.timeoutMs !== "number" || !(options.timeoutMs > 0)) {
        throw new InvalidRequestError(
          `timeoutMs must be a positive number of milliseconds, not ${String(options.timeoutMs)}`,
        );
      }
      const seconds = Math.ceil(options.timeoutMs / 1000);
      body["timeout_s"] = seconds;
      // hostd answers by the timeout; allow the usual slack beyond it.
      idleMs = seconds * 1000 + this.transport.config.timeoutMs;
    }
    if (options.env !== undefined) {
      body["env"] = Object.fromEntries(Object.entries(options.env).map(([k, v]) => [k, String(v)]));
    }
    if (options.cwd !== undefined) body["cwd"] = options.cwd;
    const parser = new ExecStream(options.onStdout, options.onStderr, options.onResult);
    const answer = await this.transport.request("POST", sandboxPath(this.id) + "/exec", {
      json: body,
      headers: { Accept: "application/x-ndjson" },
      timeoutMs: idleMs,
      what: `running code in ${this.id}`,
    });
    for await (const line of answer.lines()) await parser.feed(line);
    return parser.finish();
  }

  // ---- fork and merge -------------------------------------------------------

  /**
   * Branch this sandbox `n` ways (1 to 32); resolves to the children, each ready.
   *
   * Each child starts from this sandbox's state at this moment: Python
   * globals, running processes, files, with its own identity (hostname,
   * machine-id, entropy). This sandbox keeps running. Either all `n`
   * children are made or none. A fork refuses a sandbox with an exec or
   * file transfer in flight (ConflictError).
   */
  async fork(options: ForkOptions = {}): Promise<Sandbox[]> {
    this.checkOpen("fork");
    const n = options.n ?? 1;
    if (!Number.isInteger(n) || n < 1 || n > MAX_FORK) {
      throw new InvalidRequestError(`n must be an integer from 1 to ${MAX_FORK}, not ${String(n)}`);
    }
    const doc = await this.transport.json("POST", sandboxPath(this.id) + "/fork", {
      json: { n },
      what: `forking ${this.id}`,
    });
    const children = isObject(doc) ? doc["children"] : undefined;
    if (!Array.isArray(children) || children.length !== n) {
      throw new ProtocolError(`hostd answered a fork of ${n} with ${JSON.stringify(doc)}`);
    }
    return children.map((info) => new Sandbox(this.transport, info));
  }

  /**
   * Make this sandbox continue as `winner`, one of its forked descendants.
   *
   * Afterwards this sandbox's id runs the winner's world (memory, processes,
   * files), its own old world is destroyed, and the winner's id is gone
   * (a `winner` object is marked closed). Other children are untouched.
   */
  async mergeInto(winner: Sandbox | string): Promise<void> {
    this.checkOpen("merge into");
    const winnerId = winner instanceof Sandbox ? winner.id : winner;
    if (typeof winnerId !== "string" || !winnerId) {
      throw new InvalidRequestError(`winner must be a Sandbox or a sandbox id, not ${JSON.stringify(winner)}`);
    }
    const info = await this.transport.json(
      "POST",
      sandboxPath(this.id) + "/merge_into/" + encodeURIComponent(winnerId),
      { what: `merging ${winnerId} into ${this.id}` },
    );
    if (isObject(info) && info["id"] === this.id) this.info = info as SandboxInfo;
    if (winner instanceof Sandbox) winner.isClosed = true;
  }

  // ---- Spaces ---------------------------------------------------------------

  /**
   * Save this sandbox to disk as a Space and stop its VM; resolves to the space id.
   *
   * The Space holds everything: memory (Python globals), running processes,
   * files. Resume it with `Sandbox.resume(spaceId)`, from this process or
   * another, also after hostd restarts. Afterwards this object runs no code
   * (SandboxClosedError); the sandbox stays listed as "frozen" until
   * close(), which then only forgets that record (the Space stays).
   */
  async freeze(): Promise<string> {
    this.checkOpen("freeze");
    const doc = await this.transport.json("POST", sandboxPath(this.id) + "/freeze", {
      timeoutMs: Math.max(this.transport.config.timeoutMs, SPACE_OP_TIMEOUT_MS),
      what: `freezing ${this.id}`,
    });
    const space = new Space(doc);
    this.frozenInto = space;
    // What hostd's own object now says; refresh() would fetch the same.
    this.info = { ...this.info, state: "frozen", space_id: space.spaceId };
    return space.spaceId;
  }

  // ---- lifetime -------------------------------------------------------------

  /**
   * Destroy the sandbox and free everything it held; closing twice is fine.
   * For a frozen sandbox this only drops its "frozen" record: its Space stays.
   */
  async close(): Promise<void> {
    if (this.isClosed) return;
    try {
      await this.transport.json("DELETE", sandboxPath(this.id), { what: `destroying ${this.id}` });
    } catch (err) {
      // Already gone (destroyed elsewhere, or reaped): the goal is met.
      if (!(err instanceof NotFoundError)) throw err;
    }
    this.isClosed = true;
  }

  /** @internal */
  checkOpen(doing: string, frozenOk = false): void {
    if (this.isClosed) {
      throw new SandboxClosedError(
        `cannot ${doing} sandbox ${this.id}: it was closed (destroyed); create a new one with Sandbox.create()`,
      );
    }
    if (this.frozenInto !== undefined && !frozenOk) {
      const spaceId = this.frozenInto.spaceId;
      throw new SandboxClosedError(
        `cannot ${doing} sandbox ${this.id}: it was frozen into Space ${spaceId}; ` +
          `resume it with Sandbox.resume("${spaceId}")`,
      );
    }
  }

  toString(): string {
    return `Sandbox(${this.id}, ${this.isClosed ? "closed" : (this.state ?? "unknown")})`;
  }
}

function sandboxPath(sandboxId: string): string {
  if (typeof sandboxId !== "string" || !sandboxId) {
    throw new InvalidRequestError(`a sandbox id must be a non-empty string, not ${JSON.stringify(sandboxId)}`);
  }
  return "/v1/sandboxes/" + encodeURIComponent(sandboxId);
}
