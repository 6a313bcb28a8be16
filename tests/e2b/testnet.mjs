// A small test internet for the E2B suite's network tests (the Node twin of
// tests/net/testnet.cpp, with its own names and addresses so that it never
// meets the C++ tests' "vw"/"vu"/... on 198.18.0.0/24 when both run):
//
//   network namespace ve-inet, joined to the host by the veth ve-wan
//   198.19.0.2/24   host side (the sandboxes' uplink)   198.19.0.1 gateway
//   198.19.1.10     allowed.test  HTTP 80, HTTPS 443 (scripts/testnet/servers.py)
//   198.19.1.20     denied.test   HTTP 80, HTTPS 443
//   198.19.1.53     authoritative DNS for both names
//
// The addresses exist only inside the namespace, so a sandbox's traffic
// reaches them through hostd's bridge and the uplink or not at all; the
// guard table (ve_guard) counts and drops any sandbox packet the host would
// route anywhere else, so no test reaches the real internet. Everything is
// removed by stop(), and any leftover of a killed run by the next start.

import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { REPO } from "../../sdk/typescript/test/hostd_process.mjs";

const NETNS = "ve-inet";
const UPLINK = "ve-wan";
const GUARD = "ve_guard";
export const WAN_GATEWAY = "198.19.0.1";
export const ALLOWED_IP = "198.19.1.10";
export const DENIED_IP = "198.19.1.20";
export const RESOLVER_IP = "198.19.1.53";
const READY_TIMEOUT_MS = 20_000;

const run = (cmd, args) => execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
const tryRun = (cmd, args) => {
  try {
    run(cmd, args);
  } catch {
    // not there: nothing to remove
  }
};

// Removes whatever a run of this file left (a killed test).
function reclaim() {
  tryRun("ip", ["netns", "del", NETNS]);
  tryRun("ip", ["link", "del", UPLINK]);
  tryRun("nft", ["delete", "table", "inet", GUARD]);
}

/** Why the network tests cannot run here, or undefined. */
export function unavailable() {
  if (process.getuid?.() !== 0) return "the network tests make a network namespace: run them as root";
  for (const tool of ["ip", "nft", "openssl"]) {
    try {
      execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" });
    } catch {
      return `${tool} is not installed (scripts/install-deps.sh installs it)`;
    }
  }
  return undefined;
}

export class TestInternet {
  /**
   * Starts the namespace, its servers and the guard for the hostd bridge
   * named `bridgePrefix` (its host link is "<prefix>-up").
   */
  static async start(bridgePrefix) {
    reclaim();
    const net = new TestInternet();
    net.dir = mkdtempSync(join(tmpdir(), "vesicle-e2b-testnet-"));
    try {
      await net.#setUp(bridgePrefix);
    } catch (err) {
      await net.stop();
      throw err;
    }
    return net;
  }

  async #setUp(bridgePrefix) {
    this.cert = join(this.dir, "cert.pem");
    const key = join(this.dir, "key.pem");
    run("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", this.cert, "-days", "2",
      "-subj", "/CN=allowed.test", "-addext", "subjectAltName=DNS:allowed.test,DNS:denied.test",
    ]);

    run("ip", ["netns", "add", NETNS]);
    run("ip", ["-n", NETNS, "link", "set", "lo", "up"]);
    for (const address of [ALLOWED_IP, DENIED_IP, RESOLVER_IP])
      run("ip", ["-n", NETNS, "addr", "add", `${address}/32`, "dev", "lo"]);
    run("ip", ["link", "add", UPLINK, "type", "veth", "peer", "name", "wan0", "netns", NETNS]);
    writeFileSync(`/proc/sys/net/ipv6/conf/${UPLINK}/disable_ipv6`, "1");
    run("ip", ["addr", "add", "198.19.0.2/24", "dev", UPLINK]);
    run("ip", ["link", "set", UPLINK, "up"]);
    run("ip", ["-n", NETNS, "addr", "add", `${WAN_GATEWAY}/24`, "dev", "wan0"]);
    run("ip", ["-n", NETNS, "link", "set", "wan0", "up"]);

    const guard = `table inet ${GUARD} {
  chain forward {
    type filter hook forward priority -300; policy accept;
    iifname "${bridgePrefix}-up" oifname != "${UPLINK}" counter drop
  }
}
`;
    execFileSync("nft", ["-f", "-"], { input: guard, stdio: ["pipe", "pipe", "pipe"] });

    this.logPath = join(this.dir, "requests.log");
    const args = [
      "netns", "exec", NETNS, "/usr/bin/python3", join(REPO, "scripts", "testnet", "servers.py"),
      "--log", this.logPath, "--cert", this.cert, "--key", key,
      "--http", `allowed=${ALLOWED_IP}:80`, "--https", `allowed=${ALLOWED_IP}:443`,
      "--http", `denied=${DENIED_IP}:80`, "--https", `denied=${DENIED_IP}:443`,
      "--dns", `${RESOLVER_IP}:53`,
      "--record", `allowed.test=${ALLOWED_IP}`, "--record", `denied.test=${DENIED_IP}`,
    ];
    // `ip netns exec` execs the command: this pid is the servers'.
    this.servers = spawn("ip", args, { stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise((resolve) => this.servers.once("exit", resolve));
    this.serversExited = exited;
    await new Promise((resolve, reject) => {
      let seen = "";
      const timer = setTimeout(() => reject(new Error(`servers.py not ready in time: ${seen}`)), READY_TIMEOUT_MS);
      this.servers.stdout.on("data", (chunk) => {
        seen += chunk;
        if (seen.includes("ready\n")) {
          clearTimeout(timer);
          resolve();
        }
      });
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`servers.py exited (${code}): ${seen}`));
      });
    });
  }

  /** The servers' request log: "LABEL CLIENT HOST PATH" lines. */
  requests() {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").filter(Boolean);
    } catch {
      return [];
    }
  }

  /** Sandbox packets the host routed past the uplink (must stay 0). */
  strayPackets() {
    const listing = run("nft", ["list", "table", "inet", GUARD]);
    const found = /counter packets (\d+)/.exec(listing);
    if (!found) throw new Error(`no counter in the guard table:\n${listing}`);
    return Number(found[1]);
  }

  async stop() {
    if (this.servers && this.servers.exitCode === null && this.servers.signalCode === null) {
      this.servers.kill("SIGTERM");
      await this.serversExited;
    }
    reclaim();
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}
