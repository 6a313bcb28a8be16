// vesicle: sandboxes for AI agents, each a microVM with a persistent Python REPL.
//
//   import { Sandbox } from "vesicle";
//   const sb = await Sandbox.create();
//   await sb.runCode("x = 42");
//   console.log((await sb.runCode("print(x)")).stdout);
//   await sb.close();
//
// Configure with VESICLE_URL (default http://127.0.0.1:7070) and VESICLE_API_KEY.

export { Client, capacity, health } from "./client.js";
export type { Capacity, Health, PoolCapacity } from "./client.js";
export { DEFAULT_URL, KEY_ENV, URL_ENV } from "./config.js";
export type { Config, ConnectionOptions, FetchFn } from "./config.js";
export {
  AuthenticationError,
  CapacityError,
  ConfigurationError,
  ConflictError,
  InvalidRequestError,
  PermissionDeniedError,
  MethodNotAllowedError,
  NotFoundError,
  PayloadTooLargeError,
  ProtocolError,
  QuotaExceededError,
  SandboxClosedError,
  SandboxDiedError,
  ServerError,
  SpaceCorruptedError,
  VesicleConnectionError,
  VesicleError,
  VesicleTimeoutError,
} from "./errors.js";
export { Execution, ExecutionError, Result } from "./execution.js";
export type { ResultCallback, TextCallback } from "./execution.js";
export { SandboxFiles } from "./files.js";
export type { FileData, WriteInfo, WriteOptions } from "./files.js";
export { Sandbox } from "./sandbox.js";
export type { ForkOptions, Language, ResumeOptions, RunCodeOptions, SandboxInfo, SandboxOptions } from "./sandbox.js";
export { Space } from "./space.js";
export { VERSION } from "./version.js";
