// Calls about the host rather than one sandbox: health, capacity, the key's sandboxes and Spaces.

import { type Config, type ConnectionOptions, resolveConfig } from "./config.js";
import { ProtocolError, isObject } from "./errors.js";
import { Transport } from "./http.js";
import { Sandbox } from "./sandbox.js";
import { Space, spaceIdOf, spacePath, spacesFromList } from "./space.js";

/** hostd's liveness answer. */
export interface Health {
  status: string;
  /** "kvm" or "tcg" */
  accel?: string;
  version?: string;
  [field: string]: unknown;
}

/** One warm pool's levels. */
export interface PoolCapacity {
  template?: string;
  vcpus?: number;
  memory_mib?: number;
  template_state?: string;
  ready?: number;
  booting?: number;
  in_use?: number;
  min_ready?: number;
  max?: number;
  [field: string]: unknown;
}

/** The host's free capacity, as hostd sent it. */
export interface Capacity {
  max_sandboxes?: number;
  running?: number;
  booting?: number;
  available?: number;
  accel?: string;
  pools?: PoolCapacity[];
  [field: string]: unknown;
}

/** One hostd, one API key. Sandboxes it hands out share its configuration. */
export class Client {
  private readonly transport: Transport;

  constructor(options: ConnectionOptions = {}) {
    this.transport = new Transport(resolveConfig(options));
  }

  get config(): Config {
    return this.transport.config;
  }

  /** hostd's liveness: {status: "ok", accel, version}. Needs no API key. */
  async health(): Promise<Health> {
    const doc = await this.transport.json("GET", "/v1/healthz", { auth: false, what: "checking health" });
    if (!isObject(doc) || typeof doc["status"] !== "string") {
      throw new ProtocolError(`hostd answered the health check with ${JSON.stringify(doc)}`);
    }
    return doc as Health;
  }

  /** {max_sandboxes, running, booting, available, accel, pools}. */
  async capacity(): Promise<Capacity> {
    const doc = await this.transport.json("GET", "/v1/capacity", { what: "reading capacity" });
    if (!isObject(doc)) throw new ProtocolError(`hostd answered the capacity with ${JSON.stringify(doc)}`);
    return doc as Capacity;
  }

  /** The API key's sandboxes, each attached (closing one destroys it). */
  async sandboxes(): Promise<Sandbox[]> {
    return Sandbox.listWith(this.transport);
  }

  /** Attach to an existing sandbox (NotFoundError if the key has no such sandbox). */
  async connect(sandboxId: string): Promise<Sandbox> {
    return Sandbox.connect(sandboxId, this.transport.config);
  }

  /** The API key's Spaces (frozen sandboxes), oldest first. */
  async spaces(): Promise<Space[]> {
    return spacesFromList(await this.transport.json("GET", "/v1/spaces", { what: "listing Spaces" }));
  }

  /** One Space (NotFoundError if the key has no such Space). */
  async space(space: Space | string): Promise<Space> {
    const id = spaceIdOf(space);
    return new Space(await this.transport.json("GET", spacePath(id), { what: `looking up Space ${id}` }));
  }

  /** Bring a Space back as a new ready sandbox; see Sandbox.resume. */
  async resume(space: Space | string, options: { persistent?: boolean } = {}): Promise<Sandbox> {
    return Sandbox.resumeWith(this.transport, space, options.persistent ?? false);
  }

  /** Delete a Space and its files (NotFoundError if the key has no such Space). */
  async deleteSpace(space: Space | string): Promise<void> {
    const id = spaceIdOf(space);
    await this.transport.json("DELETE", spacePath(id), { what: `deleting Space ${id}` });
  }
}

/** hostd's liveness answer; rejects with VesicleConnectionError if it is not listening. */
export async function health(options: ConnectionOptions = {}): Promise<Health> {
  return new Client(options).health();
}

/** The host's free capacity. */
export async function capacity(options: ConnectionOptions = {}): Promise<Capacity> {
  return new Client(options).capacity();
}
