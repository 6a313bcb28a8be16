// Where the SDK finds hostd and its API key: options first, then the environment.

import { ConfigurationError } from "./errors.js";

export const DEFAULT_URL = "http://127.0.0.1:7070";
// A create waits for the VM to boot, which under TCG on a loaded host can take
// tens of seconds (hostd's own boot timeout is 90 s), so the default is generous.
export const DEFAULT_TIMEOUT_MS = 120_000;

export const URL_ENV = "VESICLE_URL";
export const KEY_ENV = "VESICLE_API_KEY";

/** The fetch the SDK calls; any WHATWG-compatible one (e.g. undici's, with its own Agent). */
export type FetchFn = (input: string, init: RequestInit) => Promise<Response>;

/** How to reach hostd; every call that talks to hostd accepts these. */
export interface ConnectionOptions {
  /** hostd's base URL; default $VESICLE_URL, else http://127.0.0.1:7070. */
  url?: string;
  /** An API key hostd knows; default $VESICLE_API_KEY. */
  apiKey?: string;
  /**
   * How long a request may wait for hostd's answer, or for the next bytes of
   * it, in milliseconds (default 120 000: a create waits for a boot).
   */
  timeoutMs?: number;
  /** The fetch to use; default the runtime's global fetch (Node >= 18). */
  fetch?: FetchFn;
}

export interface Config {
  readonly url: string; // scheme://host:port[/prefix], no trailing slash
  readonly apiKey: string | undefined;
  readonly timeoutMs: number;
  readonly fetch: FetchFn;
}

/** The effective configuration; a missing key is reported only when a call needs it. */
export function resolveConfig(
  options: ConnectionOptions = {},
  env: Record<string, string | undefined> = processEnv(),
): Config {
  const fromOption = Boolean(options.url);
  const url = checkUrl(options.url || env[URL_ENV] || DEFAULT_URL, fromOption ? "the url option" : URL_ENV);
  let apiKey = options.apiKey || env[KEY_ENV] || undefined;
  if (apiKey !== undefined) {
    apiKey = apiKey.trim();
    if (!apiKey || /[\r\n]/.test(apiKey)) {
      throw new ConfigurationError(`the vesicle API key is malformed: check ${KEY_ENV} or the apiKey option`);
    }
  }
  let timeoutMs = DEFAULT_TIMEOUT_MS;
  if (options.timeoutMs !== undefined) {
    if (typeof options.timeoutMs !== "number" || !(options.timeoutMs > 0) || !Number.isFinite(options.timeoutMs)) {
      throw new ConfigurationError(
        `timeoutMs must be a positive number of milliseconds, not ${String(options.timeoutMs)}`,
      );
    }
    timeoutMs = options.timeoutMs;
  }
  const fetchFn = options.fetch ?? globalFetch();
  return { url, apiKey, timeoutMs, fetch: fetchFn };
}

export function requireKey(config: Config): string {
  if (!config.apiKey) {
    throw new ConfigurationError(
      `no vesicle API key: set ${KEY_ENV} to a key hostd printed or stored (or pass apiKey)`,
    );
  }
  return config.apiKey;
}

function checkUrl(raw: string, source: string): string {
  const text = raw.trim();
  let parsed: URL;
  try {
    parsed = new URL(text);
  } catch {
    throw new ConfigurationError(
      `${source} ${JSON.stringify(text)} is not an http:// or https:// URL with a host (for example ${DEFAULT_URL})`,
    );
  }
  if ((parsed.protocol !== "http:" && parsed.protocol !== "https:") || !parsed.hostname) {
    throw new ConfigurationError(
      `${source} ${JSON.stringify(text)} is not an http:// or https:// URL with a host (for example ${DEFAULT_URL})`,
    );
  }
  if (parsed.search || parsed.hash) {
    throw new ConfigurationError(`${source} ${JSON.stringify(text)} must not carry a query or fragment`);
  }
  return text.replace(/\/+$/, "");
}

function processEnv(): Record<string, string | undefined> {
  // Outside Node (a browser, a worker) there is no environment: options only.
  return typeof process !== "undefined" && process.env ? process.env : {};
}

function globalFetch(): FetchFn {
  if (typeof globalThis.fetch !== "function") {
    throw new ConfigurationError(
      "this runtime has no global fetch: use Node 18 or newer, or pass the fetch option",
    );
  }
  return globalThis.fetch.bind(globalThis) as FetchFn;
}
