// A Space: a sandbox frozen to disk (memory, processes, files), waiting to be resumed.
//
// `sb.freeze()` makes one; hostd makes one too when it freezes a persistent
// sandbox that went idle, reached its lifetime, or was running when hostd
// stopped. `Sandbox.resume(spaceId)` brings it back as a new sandbox. A
// Space lives on the host's disk and survives hostd restarts.

import { InvalidRequestError, ProtocolError, isObject } from "./errors.js";

/**
 * One Space as hostd described it; `raw` is hostd's object as sent.
 *
 * `sandboxId` is the sandbox it was frozen from; the settings (template,
 * sizes, egress, timeouts, `createdAt`) are those it had. `reason` is why
 * it was frozen: "freeze" (asked for), "idle" or "lifetime" (hostd's
 * reaper), "shutdown" (hostd stopping). `sizeBytes` is what it takes on
 * disk: `stateBytes` (memory and device state) plus `diskBytes` (the disk's
 * changes) plus bookkeeping.
 */
export class Space {
  readonly spaceId: string;
  readonly sandboxId: string;
  readonly template: string;
  readonly persistent: boolean;
  readonly vcpus: number;
  readonly memoryMib: number;
  readonly diskMib: number;
  readonly egress: boolean;
  readonly egressAllow: readonly string[];
  readonly egressMode: string;
  readonly idleTimeoutS: number;
  readonly maxLifetimeS: number;
  readonly createdAt: string;
  readonly frozenAt: string;
  readonly sizeBytes: number;
  readonly stateBytes: number;
  readonly diskBytes: number;
  readonly reason: string;
  readonly raw: Readonly<Record<string, unknown>>;

  /** A Space from hostd's JSON object (ProtocolError if it is not one). */
  constructor(doc: unknown) {
    if (!isObject(doc) || typeof doc["space_id"] !== "string" || !doc["space_id"]) {
      throw new ProtocolError(`hostd answered with a Space object without a space_id: ${JSON.stringify(doc)}`);
    }
    this.spaceId = doc["space_id"];
    this.sandboxId = str(doc, "sandbox_id");
    this.template = str(doc, "template");
    this.persistent = Boolean(doc["persistent"]);
    this.vcpus = num(doc, "vcpus");
    this.memoryMib = num(doc, "memory_mib");
    this.diskMib = num(doc, "disk_mib");
    this.egress = Boolean(doc["egress"]);
    const allow = doc["egress_allow"];
    this.egressAllow = Array.isArray(allow) ? allow.map(String) : [];
    this.egressMode = str(doc, "egress_mode");
    this.idleTimeoutS = num(doc, "idle_timeout_s");
    this.maxLifetimeS = num(doc, "max_lifetime_s");
    this.createdAt = str(doc, "created_at");
    this.frozenAt = str(doc, "frozen_at");
    this.sizeBytes = num(doc, "size_bytes");
    this.stateBytes = num(doc, "state_bytes");
    this.diskBytes = num(doc, "disk_bytes");
    this.reason = str(doc, "reason");
    this.raw = doc;
  }
}

function str(doc: Record<string, unknown>, name: string): string {
  const value = doc[name];
  return value === undefined || value === null ? "" : String(value);
}

// hostd sends the byte counts as JSON numbers (doubles); protobuf's JSON
// mapping would send 64-bit integers as strings. Either is taken.
function num(doc: Record<string, unknown>, name: string): number {
  const value = doc[name];
  if (value === undefined || value === null || value === "") return 0;
  const n = typeof value === "string" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isFinite(n)) {
    throw new ProtocolError(`hostd answered with a Space whose ${name} is not a number: ${JSON.stringify(value)}`);
  }
  return Math.trunc(n);
}

/** The id of a Space given as a Space or as its id. */
export function spaceIdOf(space: Space | string): string {
  const id = space instanceof Space ? space.spaceId : space;
  if (typeof id !== "string" || !id) {
    throw new InvalidRequestError(`a Space must be a Space or a space id like "sp-...", not ${JSON.stringify(space)}`);
  }
  return id;
}

export function spacePath(space: Space | string): string {
  return "/v1/spaces/" + encodeURIComponent(spaceIdOf(space));
}

export function spacesFromList(doc: unknown): Space[] {
  const items = isObject(doc) ? (doc["spaces"] ?? []) : undefined;
  if (!Array.isArray(items)) throw new ProtocolError(`hostd answered the Space list with ${JSON.stringify(doc)}`);
  return items.map((item) => new Space(item));
}
