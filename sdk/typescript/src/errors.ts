// Typed errors of the vesicle SDK.
//
// Every error hostd answers with ({"error": {"code", "message"}} and an HTTP
// status) becomes one of these, carrying the server's code, message and
// status, so callers can catch the case they care about (`instanceof`) and
// show the server's message, which says what to do next. The classes, codes
// and status mapping are the Python SDK's (sdk/python/vesicle/errors.py).

import type { Execution } from "./execution.js";

/**
 * Base of every error the SDK throws.
 *
 * `code` is the server's error code ("not_found", "sandbox_died", ...) or a
 * local one ("closed", "config", "connection"); `status` is the HTTP status
 * hostd answered with, or undefined when no answer was involved.
 */
export class VesicleError extends Error {
  static readonly defaultCode: string = "error";
  readonly code: string;
  readonly status: number | undefined;
  /** For an exec that failed mid-stream (e.g. the sandbox died): what the code produced before. */
  execution: Execution | undefined;

  constructor(message: string, options: { code?: string; status?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const cls = new.target as typeof VesicleError;
    this.name = cls.name;
    this.code = options.code ?? cls.defaultCode;
    this.status = options.status;
    this.execution = undefined;
  }
}

/** 400: malformed input; the message names the field. */
export class InvalidRequestError extends VesicleError {
  static override readonly defaultCode: string = "invalid_argument";
}

/** 401: no API key, or one hostd does not know. */
export class AuthenticationError extends VesicleError {
  static override readonly defaultCode: string = "unauthenticated";
}

/** 403: the key is valid but may not do this (e.g. /metrics needs an admin key). */
export class PermissionDeniedError extends AuthenticationError {
  static override readonly defaultCode: string = "forbidden";
}

/** 404: unknown id, another key's sandbox or Space, or no such file. */
export class NotFoundError extends VesicleError {
  static override readonly defaultCode: string = "not_found";
}

/** 405: the route exists but not with this method (an SDK/hostd version mismatch). */
export class MethodNotAllowedError extends VesicleError {
  static override readonly defaultCode: string = "method_not_allowed";
}

/**
 * 409: the sandbox (or Space) is in the wrong state for this call: code or
 * files on a frozen sandbox, a freeze or fork while code runs, a resume of a
 * Space another resume is already restoring.
 */
export class ConflictError extends VesicleError {
  static override readonly defaultCode: string = "failed_precondition";
}

/** 410: the sandbox's VM died (or the reaper ended it); it cannot run code or move files any more. */
export class SandboxDiedError extends VesicleError {
  static override readonly defaultCode: string = "sandbox_died";
}

/** 413: a request body or an upload over its cap. */
export class PayloadTooLargeError extends VesicleError {
  static override readonly defaultCode: string = "too_large";
}

/**
 * 422: a Space's files fail their checks (truncated, changed); it cannot be
 * resumed. hostd keeps it (the message says which file and why).
 */
export class SpaceCorruptedError extends VesicleError {
  static override readonly defaultCode: string = "space_corrupted";
}

/** 429: the API key's quota (e.g. concurrent sandboxes) is used up. */
export class QuotaExceededError extends VesicleError {
  static override readonly defaultCode: string = "quota_exceeded";
}

/** 500: a hostd bug; the message says what failed. */
export class ServerError extends VesicleError {
  static override readonly defaultCode: string = "internal";
}

/** 503: the host has no room for another sandbox right now; retry later. */
export class CapacityError extends VesicleError {
  static override readonly defaultCode: string = "no_capacity";
}

/** Thrown locally, without a request, on a sandbox this object already closed (or froze). */
export class SandboxClosedError extends VesicleError {
  static override readonly defaultCode: string = "closed";
}

/** Thrown locally when the SDK is not configured (no API key, a bad URL). */
export class ConfigurationError extends VesicleError {
  static override readonly defaultCode: string = "config";
}

/** hostd could not be reached, or the connection broke mid-answer. */
export class VesicleConnectionError extends VesicleError {
  static override readonly defaultCode: string = "connection";
}

/** hostd did not answer (or send the next bytes) within the client's timeout. */
export class VesicleTimeoutError extends VesicleConnectionError {
  static override readonly defaultCode: string = "timeout";
}

/** hostd answered with something that breaks the API contract. */
export class ProtocolError extends VesicleError {
  static override readonly defaultCode: string = "protocol";
}

type ErrorClass = typeof VesicleError;

const BY_STATUS: ReadonlyMap<number, ErrorClass> = new Map<number, ErrorClass>([
  [400, InvalidRequestError],
  [401, AuthenticationError],
  [403, PermissionDeniedError],
  [404, NotFoundError],
  [405, MethodNotAllowedError],
  [409, ConflictError],
  [410, SandboxDiedError],
  [413, PayloadTooLargeError],
  [422, SpaceCorruptedError],
  [429, QuotaExceededError],
  [500, ServerError],
  [503, CapacityError],
]);

const BY_CODE: ReadonlyMap<string, ErrorClass> = new Map([
  ...[...BY_STATUS.values()].map((cls) => [cls.defaultCode, cls] as [string, ErrorClass]),
  // hostd ended the sandbox because its guest broke the agent protocol.
  ["guest_protocol_violation", SandboxDiedError] as [string, ErrorClass],
]);

/**
 * The typed error for a server error code, e.g. an exec's `failure`, which
 * arrives inside a 200 stream. An unknown code gives the base class.
 */
export function errorForCode(code: string, message: string, status?: number): VesicleError {
  const cls = BY_CODE.get(code) ?? VesicleError;
  return new cls(message, { code, ...(status === undefined ? {} : { status }) });
}

/**
 * The typed error for an HTTP error answer. The status picks the class (it
 * is what the contract fixes); the body's code and message are kept as sent.
 * A body that is not the contract's error JSON (a proxy's HTML page) still
 * gives an error naming the status.
 */
export function errorFromResponse(status: number, statusText: string, body: Uint8Array): VesicleError {
  let code: string | undefined;
  let message: string | undefined;
  const text = new TextDecoder().decode(body);
  try {
    const doc: unknown = JSON.parse(text);
    const err = isObject(doc) ? doc["error"] : undefined;
    if (isObject(err)) {
      if (typeof err["code"] === "string") code = err["code"];
      if (typeof err["message"] === "string" && err["message"]) message = err["message"];
    }
  } catch {
    // Not JSON: described from the status and the text below.
  }
  if (message === undefined) {
    message = `hostd answered HTTP ${status} ${statusText}`.trimEnd();
    const snippet = text.slice(0, 300).trim();
    if (snippet) message += `: ${snippet}`;
  }
  const cls = BY_STATUS.get(status) ?? BY_CODE.get(code ?? "") ?? VesicleError;
  return new cls(message, { ...(code === undefined ? {} : { code }), status });
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
