// The operator's page: signs in with an admin key, polls /v1/capacity and
// /v1/admin/sandboxes, destroys sandboxes and runs code in them.
//
// The key: typed into the form, kept in sessionStorage (this tab only, gone
// when it closes), sent as "Authorization: Bearer" on every call, never put
// in a URL. Everything from hostd is written with textContent, never as
// HTML, so a sandbox's output cannot script the page.
"use strict";

const KEY_STORAGE = "vesicle-admin-key";
const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

let pollTimer = null;
let consoleId = null;
// Per sandbox, the last CPU reading: {cpu, at}, for a CPU share between polls.
const lastCpu = new Map();

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const headers = { Authorization: `Bearer ${key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (!response.ok) {
    let code = "http_" + response.status;
    let message = `${path}: HTTP ${response.status}`;
    try {
      const body = await response.json();
      if (body.error) ({ code, message } = body.error);
    } catch {
      // not JSON: keep the status
    }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function mib(bytes) {
  return `${Math.round(bytes / (1024 * 1024))} MiB`;
}

function age(createdAt) {
  const seconds = Math.max(0, Math.floor((Date.now() - Date.parse(createdAt)) / 1000));
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function showLogin(message) {
  stopPolling();
  sessionStorage.removeItem(KEY_STORAGE);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("status").textContent = "";
  $("key").focus();
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  refresh();
  pollTimer = setInterval(refresh, POLL_MS);
}

function stopPolling() {
  if (pollTimer !== null) clearInterval(pollTimer);
  pollTimer = null;
}

// An answer that says the key is not (or no longer) good sends us back to
// the form; anything else is shown and the polling goes on.
function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    showLogin(error.message);
    return;
  }
  $("error").textContent = error.message;
}

let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    const [capacity, admin] = await Promise.all([
      api("/v1/capacity").then((r) => r.json()),
      api("/v1/admin/sandboxes").then((r) => r.json()),
    ]);
    renderCapacity(capacity);
    renderSandboxes(admin.sandboxes || []);
    $("status").textContent = `signed in as ${admin.admin_key_id} · updated ${new Date().toLocaleTimeString()}`;
    $("error").textContent = "";
  } catch (error) {
    failed(error);
  } finally {
    refreshing = false;
  }
}

function renderCapacity(capacity) {
  const figures = $("capacity");
  figures.replaceChildren();
  for (const [label, value] of [
    ["max sandboxes", capacity.max_sandboxes],
    ["running", capacity.running],
    ["booting", capacity.booting],
    ["available", capacity.available],
    ["accel", capacity.accel],
  ]) {
    const figure = element("div", label);
    figure.prepend(element("b", String(value)));
    figures.append(figure);
  }
  const body = $("pools").tBodies[0];
  body.replaceChildren();
  if (!(capacity.pools || []).length) {
    const row = element("tr");
    const cell = element("td", "No warm pools on this host (disable_pools, or none configured): creates restore or boot on demand.", "muted");
    cell.colSpan = 8;
    row.append(cell);
    body.append(row);
  }
  for (const pool of capacity.pools || []) {
    const row = element("tr");
    for (const cell of [pool.template, `${pool.vcpus} vCPU, ${pool.memory_mib} MiB`, pool.template_state,
      pool.ready, pool.booting, pool.in_use, pool.min_ready, pool.max])
      row.append(element("td", String(cell)));
    body.append(row);
  }
}

function cpuShare(id, entry) {
  if (!entry.has_vm) {
    lastCpu.delete(id);
    return "-";
  }
  const now = performance.now();
  const before = lastCpu.get(id);
  lastCpu.set(id, { cpu: entry.cpu_seconds, at: now });
  if (!before || now <= before.at) return `${entry.cpu_seconds.toFixed(1)} s`;
  const share = ((entry.cpu_seconds - before.cpu) / ((now - before.at) / 1000)) * 100;
  return `${Math.max(0, share).toFixed(0)} % (${entry.cpu_seconds.toFixed(1)} s)`;
}

function renderSandboxes(list) {
  const body = $("sandboxes").tBodies[0];
  body.replaceChildren();
  $("count").textContent = `(${list.length})`;
  $("none").hidden = list.length > 0;
  const seen = new Set();
  for (const entry of list) {
    const sb = entry.sandbox;
    seen.add(sb.id);
    const row = element("tr");
    row.dataset.id = sb.id;
    row.append(element("td", sb.id));
    row.append(element("td", entry.owner_key_id));
    const state = element("td", sb.state, `state-${sb.state}`);
    if (sb.dead_reason) state.title = sb.dead_reason;
    row.append(state);
    row.append(element("td", sb.template || "default"));
    const egress = sb.egress_mode === "allowlist" ? `allowlist: ${sb.egress_allow.join(", ")}` : sb.egress_mode;
    row.append(element("td", egress));
    row.append(element("td", age(sb.created_at), "num"));
    const memory = entry.has_vm ? `${mib(entry.rss_bytes)} / ${sb.memory_mib} MiB` : `- / ${sb.memory_mib} MiB`;
    row.append(element("td", memory, "num"));
    row.append(element("td", cpuShare(sb.id, entry), "num"));
    const actions = element("td");
    const open = element("button", "Console");
    open.addEventListener("click", () => openConsole(sb.id));
    const destroy = element("button", "Destroy", "danger");
    destroy.addEventListener("click", () => destroySandbox(sb.id, entry.owner_key_id));
    actions.append(open, " ", destroy);
    row.append(actions);
    body.append(row);
  }
  for (const id of lastCpu.keys()) if (!seen.has(id)) lastCpu.delete(id);
  if (consoleId !== null && !seen.has(consoleId)) closeConsole();
}

async function destroySandbox(id, owner) {
  if (!confirm(`Destroy sandbox ${id} (owner ${owner})? Its VM and files are freed.`)) return;
  try {
    await api(`/v1/admin/sandboxes/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (error) {
    failed(error);
  }
  refresh();
}

function openConsole(id) {
  consoleId = id;
  $("console").hidden = false;
  $("console-id").textContent = id;
  $("output").replaceChildren();
  $("code").focus();
}

function closeConsole() {
  consoleId = null;
  $("console").hidden = true;
}

// Base64 of the REST API's data_b64, to bytes.
function decode(base64) {
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
}

function showEvent(out, event) {
  const text = (e) => (e.data !== undefined ? e.data : new TextDecoder().decode(decode(e.data_b64 || "")));
  switch (event.type) {
    case "stdout":
      out.append(element("span", text(event)));
      break;
    case "stderr":
      out.append(element("span", text(event), "stderr"));
      break;
    case "result":
      out.append(element("span", event.data + "\n", "result"));
      break;
    case "display": {
      const images = event.data_b64 || {};
      const mime = ["image/png", "image/jpeg", "image/gif"].find((m) => images[m]);
      if (mime) {
        const img = element("img");
        img.src = `data:${mime};base64,${images[mime]}`;
        img.alt = (event.data || {})["text/plain"] || mime;
        out.append(img);
      } else if (!event.is_main_result) {
        out.append(element("span", ((event.data || {})["text/plain"] || "[display]") + "\n"));
      }
      break;
    }
    case "error":
      out.append(element("span", event.traceback || `${event.name}: ${event.value}\n`, "traceback"));
      break;
    case "exit": {
      let note = `[exit ${event.exit_code}, ${event.duration_ms} ms`;
      if (event.timed_out) note += ", timed out";
      if (event.truncated) note += ", output truncated";
      if (event.repl_restarted) note += ", REPL restarted";
      if (event.failure) note += `, ${event.failure.code}: ${event.failure.message}`;
      out.append(element("span", note + "]\n", "note"));
      break;
    }
  }
}

async function runCode(submit) {
  submit.preventDefault();
  if (consoleId === null) return;
  const out = $("output");
  out.replaceChildren();
  $("run").disabled = true;
  try {
    const response = await api(`/v1/admin/sandboxes/${encodeURIComponent(consoleId)}/exec`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ code: $("code").value, language: $("language").value }),
    });
    // NDJSON, one event a line, shown as each arrives.
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      let newline;
      while ((newline = pending.indexOf("\n")) >= 0) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (line.trim()) showEvent(out, JSON.parse(line));
      }
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return failed(error);
    out.append(element("span", `${error.code ? error.code + ": " : ""}${error.message}\n`, "stderr"));
  } finally {
    $("run").disabled = false;
  }
}

async function signIn(submit) {
  submit.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  try {
    await api("/v1/admin/sandboxes");
  } catch (error) {
    showLogin(error.message);
    return;
  }
  showMain();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => showLogin(""));
  $("exec-form").addEventListener("submit", runCode);
  $("close-console").addEventListener("click", closeConsole);
  if (sessionStorage.getItem(KEY_STORAGE)) showMain();
  else showLogin("");
});
