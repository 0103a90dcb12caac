// End-to-end checks of the console in a real headless Chromium, driven by
// playwright-core, against a running `datastorer serve` that
// crates/datastorer-server/tests/console.rs started and filled. Every page
// is saved as a screenshot under SCREENSHOTS. Exits non-zero on the first
// failed check, saying which.
//
// Environment: BASE_URL, ADMIN_KEY, READ_KEY, SCREENSHOTS, CHROMIUM.

import { chromium } from "playwright-core";

const { BASE_URL, ADMIN_KEY, READ_KEY, SCREENSHOTS, CHROMIUM } = process.env;
const secrets = [ADMIN_KEY, READ_KEY];

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
// CI runs this beside the other tests on two cores: generous, never a hang.
page.setDefaultTimeout(60000);
const urls = [];
const problems = [];
page.on("request", (r) => urls.push(r.url()));
// An API's 4xx answer is logged by the browser as a failed load: expected
// here (a wrong key, a missing key); anything else (a script error, a CSP
// refusal) is a problem.
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) problems.push(m.text());
});
page.on("pageerror", (e) => problems.push(String(e)));
// A key's page, once it shows that key (the previous page stays until the
// new one has loaded: the console routes by the URL's fragment).
const openKey = async (key) => {
  await page.goto(`${BASE_URL}/console#/key/profiles/${key}`);
  await page.getByRole("heading", { name: key, exact: true }).waitFor();
  await page.locator("#data").waitFor();
};
const shot = (name) => page.screenshot({ path: `${SCREENSHOTS}/${name}.png`, fullPage: true });

try {
  // Sign in, by keyboard: a wrong key first.
  const firstPaint = Date.now();
  await page.goto(`${BASE_URL}/console`);
  await page.getByLabel("API key").waitFor();
  await shot("01-sign-in");
  await page.getByLabel("API key").fill("not-a-key-of-this-server-000000");
  await page.keyboard.press("Enter");
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).includes("unauthenticated"), "a wrong key is refused, saying why");
  await page.getByLabel("API key").fill(ADMIN_KEY);
  await page.keyboard.press("Enter");
  await page.locator("#stores").waitFor();
  console.log(`  stores page shown ${Date.now() - firstPaint} ms after the console was opened`);
  check(await page.getByRole("link", { name: "profiles", exact: true }).isVisible(), "the stores are listed");
  await shot("02-stores");

  // A player by user id.
  await page.getByLabel("Find a player by user id").fill("4242");
  await page.keyboard.press("Enter");
  await page.locator("#user-records").waitFor();
  await shot("03-player");
  await page.getByRole("link", { name: "profiles / player-4242" }).click();
  await page.locator("#data").waitFor();
  const data = JSON.parse(await page.locator("#data").textContent());
  check(data.coins === 42 && data.name === "Ada", "the player's record shows its data");
  const facts = await page.locator(".facts").textContent();
  check(facts.includes("4242"), "with its user ids");
  check(facts.includes("free: no session holds it"), "and says nobody holds it");
  await shot("04-record");

  // Edit a free key: saved only if it is still the version shown.
  const edit = async (change) => {
    const doc = JSON.parse(await page.locator("#edit").inputValue());
    change(doc);
    await page.locator("#edit").fill(JSON.stringify(doc, null, 2));
  };
  await edit((d) => { d.coins = 100; });
  await page.getByRole("button", { name: "Save" }).click();
  await page.locator(".alert.ok").waitFor();
  check((await page.locator(".alert.ok").textContent()).startsWith("Saved: revision"), "a free key's edit is saved");
  check(JSON.parse(await page.locator("#data").textContent()).coins === 100, "and shown");
  await shot("05-edited");
  // Someone else writes it; the page is now stale.
  const put = await fetch(`${BASE_URL}/v1/stores/profiles/keys/player-4242`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${ADMIN_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ coins: 7, name: "Ada" }),
  });
  check(put.ok, "another writer saves the key");
  await edit((d) => { d.coins = 999; });
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).includes("changed since this page loaded"), "a stale page gets a clear conflict");
  check(JSON.parse(await page.locator("#edit").inputValue()).coins === 999, "and keeps the edit");
  await shot("06-stale-edit");

  // The key's history: the two last versions compared, the older restored.
  await page.getByRole("link", { name: "History" }).click();
  await page.locator("#versions").waitFor();
  check((await page.locator("#versions tbody tr").count()) >= 3, "the key's versions are listed");
  await page.getByRole("button", { name: "Show differences" }).click();
  await page.locator("#diff li").first().waitFor();
  check((await page.locator("#diff").textContent()).includes("/coins: 100 → 7"), "a diff of two versions names what changed");
  await shot("07-history");
  const older = await page.locator("#diff-from").inputValue();
  await page.getByRole("button", { name: `Restore version ${older}` }).click();
  await page.locator(".alert.ok").waitFor();
  check((await page.locator(".alert.ok").textContent()).startsWith(`Restored ${older}, now version`), "a version is restored");
  await openKey("player-4242");
  check(JSON.parse(await page.locator("#data").textContent()).coins === 100, "and the record is that version again");

  // A player's erasure, confirmed by typing the user id.
  await page.goto(`${BASE_URL}/console#/user/9001`);
  await page.locator("#user-records").waitFor();
  await page.getByLabel("Type 9001 to confirm").fill("900");
  await page.getByRole("button", { name: "Erase" }).click();
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).includes("exactly"), "an erasure needs the user id typed exactly");
  await page.getByLabel("Type 9001 to confirm").fill("9001");
  await page.getByRole("button", { name: "Erase" }).click();
  await page.locator("#receipt").waitFor();
  check((await page.locator("#receipt").textContent()).length > 2, "the erasure's receipt is shown");
  await shot("08-erased");

  // The audit trail shows both, under the signed-in key's name; filtered.
  await page.getByRole("link", { name: "Audit" }).click();
  await page.locator("#audit").waitFor();
  const trail = await page.locator("#audit").textContent();
  check(trail.includes("restore") && trail.includes("erase") && trail.includes("admin"), "the audit trail shows the restore and the erasure by the signed-in key");
  check(trail.includes("console_edit"), "and the console's own edit");
  await page.getByLabel("Action").fill("restore");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForFunction(() => [...document.querySelectorAll("#audit tbody tr")].every((r) => r.textContent.includes("restore")));
  check(true, "and filters by action");
  await shot("09-audit");

  // A store back to a point in time: the dry run's list, then the restore.
  await page.goto(`${BASE_URL}/console#/keys/events`);
  await page.getByLabel("Point in time (your local time)").waitFor();
  const at = Number(process.env.RESTORE_AT_MS);
  const local = new Date(at - new Date(at).getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  await page.getByLabel("Point in time (your local time)").fill(local);
  await page.getByRole("button", { name: "Preview (dry run)" }).click();
  await page.locator("#store-restore-changes").waitFor();
  const changes = await page.locator("#store-restore-changes").textContent();
  check(changes.includes("e1: restore") && changes.includes("e3: delete") && !changes.includes("e2"), "a store restore's dry run lists what would change");
  await page.getByLabel("Type events to restore the whole store").fill("events");
  await page.getByRole("button", { name: "Restore the store" }).click();
  await page.locator("#store-restore .alert.ok").waitFor();
  check((await page.locator("#store-restore .alert.ok").textContent()).startsWith("Restored:"), "and the store is restored");
  await shot("17-store-restore");

  // Live health: the request chart moves while a client writes.
  await page.getByRole("link", { name: "Health" }).click();
  await page.locator("#chart-0 canvas").waitFor();
  const load = (async () => {
    const until = Date.now() + 5000;
    for (let i = 0; Date.now() < until; i++) {
      await fetch(`${BASE_URL}/v1/stores/profiles/keys/load-${i % 20}`, {
        method: "PUT",
        headers: { Authorization: `Bearer ${ADMIN_KEY}`, "Content-Type": "application/json" },
        body: JSON.stringify({ n: i }),
      });
    }
  })();
  await page.waitForFunction(() => Number(document.getElementById("rate-0-0")?.textContent) > 5, null, { timeout: 30000 });
  check(true, "the requests chart moves under load");
  await load;
  await shot("16-health");

  // A held key says who holds it; an edit is applied after a hand-over,
  // while its game server keeps saving, and keeps what the game saved.
  await openKey("held-1");
  check((await page.locator(".facts").textContent()).includes("held by game-2 through server"), "a held key names its holder, client and server");
  check(!(await page.getByRole("button", { name: "Save", exact: true }).count()), "a held key offers no plain save");
  await shot("10-held-record");
  await edit((d) => { d.coins = 500; });
  await page.getByRole("button", { name: "Ask the holder to hand over, then apply" }).click();
  await page.locator(".alert.ok").waitFor({ timeout: 30000 });
  check((await page.locator(".alert.ok").textContent()).includes("Applied after the holder handed over"), "a held key's edit is applied after the hand-over");
  await shot("11-handed-over");
  // Another held key: the change goes to its holder as a message.
  await openKey("held-2");
  await edit((d) => { d.coins = 321; });
  await page.getByRole("button", { name: "Send to the holder as a message" }).click();
  await page.locator(".alert.ok").waitFor();
  check((await page.locator(".alert.ok").textContent()).includes("Delivered to the holder as message"), "or is delivered to its holder as a message");
  check((await page.locator("#messages").textContent()).includes('"console_edit"'), "which the key's page shows waiting");

  // Keys by prefix, paged.
  await page.goto(`${BASE_URL}/console#/keys/profiles`);
  await page.getByLabel("Key prefix").fill("bulk-");
  await page.keyboard.press("Enter");
  // The unfiltered list is on the page until the search answers.
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll("#keys li")];
    return items.length > 0 && items.every((li) => li.textContent.startsWith("bulk-"));
  });
  check((await page.locator("#keys li").count()) === 50, "a page of 50 keys");
  await shot("12-keys");
  await page.getByRole("link", { name: "Next page" }).click();
  await page.waitForFunction(() => document.querySelectorAll("#keys li").length === 10);
  check((await page.locator("#keys li").count()) === 10, "the next page has the other 10");

  // Edge cases render without breaking the page.
  await page.goto(`${BASE_URL}/console#/keys/empty-store`);
  await page.getByText("This store is empty.").waitFor();
  check(true, "an empty store says so");
  await page.goto(`${BASE_URL}/console#/key/profiles/big`);
  await page.locator("#data").waitFor({ timeout: 30000 });
  const size = await page.locator(".facts").textContent();
  check(/MiB of 4\.00 MiB/.test(size), "a 4 MiB document shows its size against the limit");
  check((await page.locator("#data").textContent()).length === 256 * 1024, "shown in part");
  check(await page.getByRole("button", { name: /show the whole document/ }).isVisible(), "with a way to show it whole");
  check((await page.locator("#edit").inputValue()) === "", "and loaded into the editor only when asked");
  await shot("13-big-record");
  await page.goto(`${BASE_URL}/console#/key/profiles/no-such-key`);
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).includes("no_such_key"), "a missing key is a readable error");

  // A narrow window.
  await page.setViewportSize({ width: 400, height: 800 });
  await openKey("player-4242");
  await shot("14-record-narrow");
  await page.setViewportSize({ width: 1280, height: 800 });

  // A read-only key browses too; signing out forgets the key.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").fill(READ_KEY);
  await page.keyboard.press("Enter");
  await page.locator("#stores").waitFor();
  check(true, "a read-only key signs in and browses");
  await openKey("player-4242");
  await edit((d) => { d.coins = 1; });
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).includes("forbidden"), "a read-only key cannot change anything");
  await shot("15-read-only");
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API key").waitFor();
  check((await page.evaluate(() => sessionStorage.length)) === 0, "signing out forgets the key");

  check(!urls.some((u) => secrets.some((s) => u.includes(s))), "no key ever appears in a URL");
  check(problems.length === 0, `no script error or CSP violation (${problems.join("; ")})`);
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
