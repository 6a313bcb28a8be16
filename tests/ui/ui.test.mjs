// The operator's page (/ui) in a real browser: Debian's chromium, headless,
// driven by playwright-core, against a real hostd booting a real VM. The page
// loads, refuses a wrong key and a key that is not an admin's, signs in with
// the admin key, lists a sandbox another key created (with its owner), runs
// print(6*7) in its console and sees 42, then a chart it sees as a picture,
// sees the CPU column update, destroys the sandbox and sees it gone. A
// screenshot is saved to build/test-artifacts/ui.png (VESICLE_ARTIFACTS_DIR
// overrides the folder).

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { chromium } from "playwright-core";

import { REPO, locateHostd, startHostd } from "../../sdk/typescript/test/hostd_process.mjs";

const CHROMIUM = process.env.VESICLE_CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = process.env.VESICLE_ARTIFACTS_DIR || join(REPO, "build", "test-artifacts");
const MEMORY_MIB = 512;
// Under TCG a cold boot takes a while; the page polls every 2 s.
const BOOT_TIMEOUT_MS = 180_000;
const UI_TIMEOUT_MS = 60_000;

const located = locateHostd();
let hostd;
let browser;

before(async () => {
  if (located.skip) return;
  hostd = await startHostd(located, { adminKey: true });
  // Root in a container: chromium's own sandbox needs user namespaces it
  // may not get, hence --no-sandbox (the page is our own).
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  if (hostd) {
    const problems = await hostd.stop();
    assert.deepEqual(problems, [], problems.join("\n"));
  }
});

async function rest(method, path, key, body) {
  const res = await fetch(hostd.url + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(BOOT_TIMEOUT_MS),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

test("the page and its files come with headers that keep them to themselves", { skip: located.skip }, async () => {
  const page = await fetch(hostd.url + "/ui");
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type"), /^text\/html/);
  assert.match(page.headers.get("content-security-policy"), /script-src 'self'/);
  assert.match(await page.text(), /<script src="\/ui\/app.js"/);
  const script = await fetch(hostd.url + "/ui/app.js");
  assert.match(script.headers.get("content-type"), /^text\/javascript/);
  assert.equal((await fetch(hostd.url + "/ui/nothing.js")).status, 404);
  assert.equal((await fetch(hostd.url + "/ui", { method: "POST" })).status, 405);
  // The data needs an admin key: none, an ordinary one, then the admin's.
  assert.equal((await rest("GET", "/v1/admin/sandboxes", "vsk_wrong")).status, 401);
  const ordinary = await rest("GET", "/v1/admin/sandboxes", hostd.key);
  assert.equal(ordinary.status, 401);
  assert.match(ordinary.body.error.message, /not an admin key/);
  const admin = await rest("GET", "/v1/admin/sandboxes", hostd.adminKey);
  assert.equal(admin.status, 200);
  assert.deepEqual(admin.body.sandboxes, []);
});

test("an operator signs in, sees another key's sandbox, runs code in it and destroys it", { skip: located.skip, timeout: 600_000 }, async () => {
  const created = await rest("POST", "/v1/sandboxes", hostd.key, { memory_mib: MEMORY_MIB });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(err.message));
  try {
    await page.goto(hostd.url + "/ui");
    await page.locator("#login").waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });

    // A wrong key and an ordinary key are refused, and the form says why.
    await page.fill("#key", "vsk_00000000000000000000000000000000");
    await page.click("#login button[type=submit]");
    await page.locator("#login-error", { hasText: "not valid" }).waitFor({ timeout: UI_TIMEOUT_MS });
    await page.fill("#key", hostd.key);
    await page.click("#login button[type=submit]");
    await page.locator("#login-error", { hasText: "not an admin key" }).waitFor({ timeout: UI_TIMEOUT_MS });

    await page.fill("#key", hostd.adminKey);
    await page.click("#login button[type=submit]");
    const row = page.locator(`#sandboxes tr[data-id="${id}"]`);
    await row.waitFor({ timeout: UI_TIMEOUT_MS });
    // The key lives in this tab's sessionStorage, never in the URL.
    assert.equal(await page.evaluate(() => sessionStorage.getItem("vesicle-admin-key")), hostd.adminKey);
    assert.ok(!page.url().includes(hostd.adminKey));

    const cells = await row.locator("td").allTextContents();
    const admin = await rest("GET", "/v1/admin/sandboxes", hostd.adminKey);
    const entry = admin.body.sandboxes.find((s) => s.sandbox.id === id);
    assert.ok(entry, JSON.stringify(admin.body));
    assert.match(entry.owner_key_id, /^key-/);
    assert.notEqual(entry.owner_key_id, admin.body.admin_key_id);
    assert.equal(entry.has_vm, true);
    assert.ok(entry.rss_bytes > 16 * 1024 * 1024, `QEMU's RSS ${entry.rss_bytes}`);
    assert.ok(entry.cpu_seconds > 0);
    assert.equal(cells[0], id);
    assert.equal(cells[1], entry.owner_key_id);
    assert.equal(cells[2], "ready");
    assert.equal(cells[3], "default");
    assert.equal(cells[4], created.body.egress_mode);
    assert.match(cells[6], new RegExp(`^\\d+ MiB / ${MEMORY_MIB} MiB$`));
    // Capacity and the pool table are there too.
    assert.match(await page.locator("#capacity").textContent(), /max sandboxes/);

    await row.getByRole("button", { name: "Console" }).click();
    await page.fill("#code", "print(6*7)");
    await page.click("#run");
    // The exit line comes in an event of its own, after the output: wait for
    // it, not for "42", or the text may be read between the two.
    await page.locator("#output", { hasText: "[exit " }).waitFor({ timeout: UI_TIMEOUT_MS });
    const output = await page.locator("#output").textContent();
    assert.match(output, /^42\n/);
    assert.match(output, /\[exit 0, \d+ ms\]/);

    // A chart comes back as a picture in the console.
    await page.fill("#code", "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4]); plt.title('from the console'); plt.show()");
    await page.click("#run");
    const chart = page.locator("#output img");
    await chart.waitFor({ timeout: UI_TIMEOUT_MS });
    assert.match(await chart.getAttribute("src"), /^data:image\/png;base64,iVBORw0KGgo/);
    assert.ok((await chart.evaluate((img) => img.naturalWidth)) > 100, "the PNG decodes in the browser");

    // Live updates: a later poll turns the CPU time into a share since the last.
    // (A locator, not waitForFunction: the page's CSP forbids eval, as it should.)
    await row.locator("td:nth-child(8)", { hasText: /^\d+ % \(/ }).waitFor({ timeout: UI_TIMEOUT_MS });

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "ui.png"), fullPage: true });

    page.once("dialog", (dialog) => dialog.accept());
    await row.getByRole("button", { name: "Destroy" }).click();
    await row.waitFor({ state: "detached", timeout: UI_TIMEOUT_MS });
    await page.locator("#none").waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    assert.equal((await rest("GET", `/v1/sandboxes/${id}`, hostd.key)).status, 404);
    assert.deepEqual(pageErrors, []);
  } finally {
    await context.close();
    await rest("DELETE", `/v1/sandboxes/${id}`, hostd.key); // gone already unless the test failed
  }
});
