// Runs a real hostd for the end-to-end tests, and checks it leaves nothing
// behind (the Node twin of tests/sdk/hostd_process.py).
//
// hostd gets its own temporary state dir, runtime dir, shm dir and loopback
// port 0 through a text-format config file (messages/config.proto), with its
// images from VESICLE_IMAGES_DIR (default build/images) and the binary from
// VESICLE_HOSTD (default build/hostd/hostd). Two API keys are made first with
// `hostd --new-key` (each printed once), so a test can show one key cannot
// see the other's sandboxes. stop() ends hostd with SIGTERM and reports any
// QEMU process of this hostd still alive and any per-VM file left in its
// runtime or shm dir.

import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO = resolve(fileURLToPath(new URL("../../..", import.meta.url)));

// What hostd prints (hostd/main.cpp): a new key alone on its line ("vsk_" and
// hex digits), and once serving "hostd <version> listening on http://<addr>:<port> (...)".
const KEY_PATTERN = /^(vsk_[0-9A-Za-z]+)$/m;
const LISTEN_PATTERN = /listening on (http:\/\/[0-9.]+:[0-9]+)/;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;

/** Where hostd and its images are, or why the tests cannot run: {binary, images} or {skip}. */
export function locateHostd() {
  const binary = resolve(process.env.VESICLE_HOSTD || join(REPO, "build", "hostd", "hostd"));
  const images = resolve(process.env.VESICLE_IMAGES_DIR || join(REPO, "build", "images"));
  if (!existsSync(binary)) {
    return { skip: `the hostd binary ${binary} does not exist: build the tree (scripts/build.sh) or set VESICLE_HOSTD` };
  }
  const missing = ["vmlinuz", "initrd.img", "rootfs.ext4"].filter((n) => !existsSync(join(images, n)));
  if (missing.length > 0) {
    // hostd is built but its images are not: a broken build, not a reason to skip.
    throw new Error(`the guest images dir ${images} lacks ${missing.join(", ")}: build them (scripts/build.sh) or set VESICLE_IMAGES_DIR`);
  }
  return { binary, images };
}

export class RunningHostd {
  constructor({ binary, top, shmDir, runtimeDir, configPath, logPath }) {
    Object.assign(this, { binary, top, shmDir, runtimeDir, configPath, logPath });
    this.proc = undefined;
    this.url = undefined;
    this.key = undefined;
    this.otherKey = undefined;
  }

  log() {
    return existsSync(this.logPath) ? readFileSync(this.logPath, "utf8") : "";
  }

  newKey(extraArgs = []) {
    const done = spawnSync(this.binary, ["--config", this.configPath, "--new-key", ...extraArgs], { encoding: "utf8", timeout: 30_000 });
    const found = KEY_PATTERN.exec(done.stdout ?? "");
    if (done.status !== 0 || !found) {
      throw new Error(`hostd --new-key failed (${done.status}): ${done.stdout}${done.stderr}`);
    }
    return found[1];
  }

  async launch() {
    const log = openSync(this.logPath, "a");
    this.proc = spawn(this.binary, ["--config", this.configPath], { stdio: ["ignore", log, log] });
    closeSync(log);
    const exited = new Promise((resolve) => this.proc.once("exit", (code, signal) => resolve({ code, signal })));
    this.exited = exited;
    const deadline = Date.now() + START_TIMEOUT_MS;
    let gone;
    exited.then((status) => (gone = status));
    while (true) {
      if (gone) throw new Error(`hostd exited (${JSON.stringify(gone)}) at start:\n${this.log()}`);
      const found = LISTEN_PATTERN.exec(this.log());
      if (found && (await healthy(found[1]))) {
        this.url = found[1];
        return;
      }
      if (Date.now() > deadline) {
        this.proc.kill("SIGKILL");
        throw new Error(`hostd did not print its address and answer /v1/healthz within ${START_TIMEOUT_MS / 1000} s:\n${this.log()}`);
      }
      await sleep(100);
    }
  }

  /**
   * SIGTERM hostd, wait for it and its QEMUs, remove the temp dirs. Returns
   * the problems found (empty when hostd cleaned up after itself).
   */
  async stop() {
    const problems = [];
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill("SIGTERM");
      const timedOut = await Promise.race([this.exited.then(() => false), sleep(STOP_TIMEOUT_MS).then(() => true)]);
      if (timedOut) {
        problems.push(`hostd did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM`);
        this.proc.kill("SIGKILL");
        await this.exited;
      }
    }
    const ours = [this.runtimeDir, this.shmDir];
    // QEMU children may take a moment to go after hostd.
    let left = qemuProcessesUnder(ours);
    for (let waited = 0; left.length > 0 && waited < 10_000; waited += 200) {
      await sleep(200);
      left = qemuProcessesUnder(ours);
    }
    if (left.length > 0) {
      problems.push(`QEMU processes of this hostd outlived it: ${left.join(", ")}`);
      for (const pid of left) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    // Template snapshots' RAM files stay by design (the next hostd reuses them).
    const leftovers = ours.flatMap((d) => filesUnder(d)).filter((p) => !p.split("/").at(-1).startsWith("vesicle-template-"));
    if (leftovers.length > 0) problems.push(`hostd left per-VM files behind: ${leftovers.slice(0, 10).join(", ")}`);
    const log = this.log();
    removeCgroups(basename(this.top));
    rmSync(this.top, { recursive: true, force: true });
    rmSync(this.shmDir, { recursive: true, force: true });
    process.removeListener("exit", this.killOnExit);
    if (problems.length > 0) problems.push(`hostd log (tail):\n${log.slice(-4000)}`);
    return problems;
  }
}

/** Remove hostd's cgroup parent and any leaf left in it (cgroup v1). */
function removeCgroups(parent) {
  for (const controller of ["memory", "pids", "cpu"]) {
    const root = join("/sys/fs/cgroup", controller, parent);
    if (!existsSync(root)) continue;
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        for (const leaf of readdirSync(root, { withFileTypes: true }))
          if (leaf.isDirectory()) rmdirSync(join(root, leaf.name));
        rmdirSync(root);
        break;
      } catch {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100);
      }
    }
  }
}

/**
 * Start a hostd with two fresh keys (`key`, `otherKey`) on temp dirs, and an
 * admin key (`adminKey`, `hostd --new-key --admin`) if asked; throws if it
 * does not come up.
 */
export async function startHostd({ binary, images }, { maxSandboxes = 4, extraConfig = "disable_pools: true\n", adminKey = false } = {}) {
  const top = mkdtempSync(join(tmpdir(), "vesicle-ts-test-"));
  const shmDir = mkdtempSync("/dev/shm/vesicle-ts-test-");
  const runtimeDir = join(top, "run");
  const configPath = join(top, "hostd.conf");
  writeFileSync(
    configPath,
    'listen: "127.0.0.1:0"\n' +
      `state_dir: "${join(top, "state")}"\n` +
      `images_dir: "${images}"\n` +
      `runtime_dir: "${runtimeDir}"\n` +
      `shm_dir: "${shmDir}"\n` +
      `max_sandboxes: ${maxSandboxes}\n` +
      // Its own cgroup parent, which stop() removes even when hostd could not.
      `confinement { cgroup_parent: "${basename(top)}" }\n` +
      extraConfig,
  );
  const hostd = new RunningHostd({ binary, top, shmDir, runtimeDir, configPath, logPath: join(top, "hostd.log") });
  // If the test process dies without stop(), hostd must not outlive it
  // (its QEMUs die with it: they carry PR_SET_PDEATHSIG).
  hostd.killOnExit = () => hostd.proc?.kill("SIGKILL");
  process.on("exit", hostd.killOnExit);
  try {
    hostd.key = hostd.newKey();
    hostd.otherKey = hostd.newKey();
    if (adminKey) hostd.adminKey = hostd.newKey(["--admin"]);
    await hostd.launch();
  } catch (err) {
    await hostd.stop();
    throw err;
  }
  return hostd;
}

async function healthy(url) {
  try {
    const res = await fetch(url + "/v1/healthz", { signal: AbortSignal.timeout(2000) });
    return res.status === 200 && (await res.json()).status === "ok";
  } catch {
    return false;
  }
}

/** PIDs of QEMU processes whose command line names one of `paths` (ours only). */
export function qemuProcessesUnder(paths) {
  const found = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, "latin1");
    } catch {
      continue;
    }
    const argv0 = cmdline.split("\0", 1)[0];
    if (argv0.includes("qemu") && paths.some((p) => cmdline.includes(p))) found.push(Number(entry));
  }
  return found;
}

function filesUnder(dir) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    out.push(path);
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) out.push(...filesUnder(path));
  }
  return out;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
