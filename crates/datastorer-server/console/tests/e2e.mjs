// End-to-end checks of the console in a real headless Chromium, driven by
// playwright-core, against a running `datastorer serve` that
// crates/datastorer-server/tests/console.rs started and filled. Every page
// is saved as a screenshot under SCREENSHOTS. Exits non-zero on the first
// failed check, saying which.
//
// Environment: BASE_URL, ADMIN_KEY, READ_KEY, GAME_KEY (a write key with a
// budget per client), SCREENSHOTS, CHROMIUM.

import { chromium } from "playwright-core";

const { BASE_URL, ADMIN_KEY, READ_KEY, GAME_KEY, SCREENSHOTS, CHROMIUM } = process.env;
const secrets = [ADMIN_KEY, READ_KEY, GAME_KEY];

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
  // Each with its key count and size, counted on the server.
  const listed = await (await fetch(`${BASE_URL}/v1/stores/profiles/keys?limit=1000`, { headers: { Authorization: `Bearer ${ADMIN_KEY}` } })).json();
  const profilesRow = page.locator("#stores tr", { has: page.getByRole("link", { name: "profiles", exact: true }) });
  await page.waitForFunction(() => !document.querySelector("#stores tbody")?.textContent.includes("…"));
  const cells = await profilesRow.locator("td").allTextContents();
  check(cells[1] === String(listed.keys.length), `a store shows its key count (${cells[1]} of ${listed.keys.length})`);
  check(/MiB$/.test(cells[2]) && Number(cells[3]) >= listed.keys.length, `and its size and kept versions (${cells.join(" | ")})`);
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
  await page.getByLabel("Action").fill("");
  await page.getByLabel("Store").fill("profiles");
  await page.getByLabel("Key", { exact: true }).fill("player-4242");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#audit tbody tr")];
    return rows.length > 0 && rows.every((r) => r.textContent.includes("profiles / player-4242"));
  });
  const forKey = await page.locator("#audit").textContent();
  check(forKey.includes("restore") && forKey.includes("console_edit"), "and by the record acted on");
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
  check((await page.locator("#routes").textContent()).includes("/v1/stores/{store}/keys/{key}"), "the busiest routes are named");
  // Two game servers under one key: one spends more than its budget (60 a
  // minute), the other a little.
  const game = (client, n) => Promise.all(Array.from({ length: n }, () =>
    fetch(`${BASE_URL}/v1/stores/profiles`, { headers: { Authorization: `Bearer ${GAME_KEY}`, "Datastorer-Client-Id": client } })
      .then((r) => r.status)));
  const spent = [...(await game("game-a", 75)), ...(await game("game-b", 5))];
  check(spent.filter((st) => st === 429).length >= 10, "a game server over its budget is refused");
  // The table shows every refusal once a reading after the burst is in.
  const refusedAll = spent.filter((st) => st === 429).length;
  await page.waitForFunction((n) => [...document.querySelectorAll("#budgets tbody tr")]
    .some((r) => r.textContent.startsWith("game · game-a") && r.querySelector(".refused-total")?.textContent === String(n)), refusedAll);
  const budgetRows = await page.locator("#budgets tbody tr").allTextContents();
  const rowA = budgetRows.find((r) => r.startsWith("game · game-a")) ?? "";
  check(budgetRows.some((r) => r.startsWith("game · game-b")),
    `the budgets of a key and of each of its clients are shown (${rowA}; ${refusedAll} refused)`);
  // The burst spent the client's budget; it refills at one request a second.
  check((await page.locator("#chart-4").count()) === 1 && (await page.getByText("game, busiest client (%):").count()) === 1,
    "with a chart of each budgeted key and its busiest client");
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

  // Delete, by the same rules as an edit: a free key only if it is still
  // the version shown, a held one after its holder handed over.
  await openKey("to-delete");
  await page.getByLabel("Type to-delete to confirm").fill("to-delet");
  await page.getByRole("button", { name: "Delete this key" }).click();
  await page.getByRole("alert").waitFor();
  check((await page.getByRole("alert").textContent()).includes("type the key's name"), "a delete needs the key's name typed exactly");
  await page.getByLabel("Type to-delete to confirm").fill("to-delete");
  await page.getByRole("button", { name: "Delete this key" }).click();
  await page.locator(".alert.ok").waitFor();
  check((await page.locator(".alert.ok").textContent()).startsWith("Deleted to-delete"), "a free key is deleted");
  await openKey("held-3");
  await page.getByLabel("Type held-3 to confirm").fill("held-3");
  await page.getByRole("button", { name: "Ask the holder to hand over, then delete" }).click();
  await page.locator(".alert.ok").waitFor({ timeout: 30000 });
  check((await page.locator(".alert.ok").textContent()).includes("The holder handed over, then held-3 was deleted"), "a held key is deleted after its holder handed over");
  await shot("18-deleted");

  // Keys by prefix, paged.
  await page.goto(`${BASE_URL}/console#/keys/profiles`);
  await page.getByLabel("Key prefix").fill("bulk-");
  // The list arriving meanwhile draws the page again; the box keeps the focus.
  await page.locator("#keys li").first().waitFor();
  check(await page.getByLabel("Key prefix").evaluate((el) => el === document.activeElement && el.value === "bulk-"),
    "a page drawn again keeps what the user was typing, and the focus");
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
  check(await page.locator("#read-only").isVisible(), "a read-only key is told it can look, not change");
  check(!(await page.locator("#edit, #delete, #save").count()), "and is offered no edit and no delete");
  check(await page.locator("#audit-link").isHidden(), "nor the audit trail");
  await shot("15-read-only");
  await page.getByRole("link", { name: "History" }).click();
  await page.locator("#versions").waitFor();
  check(!(await page.getByRole("button", { name: /^Restore version/ }).count()), "nor a restore");
  // The server refuses it all the same.
  const refused = await page.evaluate(async (url) => (await fetch(url, {
    method: "PUT",
    headers: { Authorization: `Bearer ${sessionStorage.getItem("datastorer.apiKey")}`, "Content-Type": "application/json" },
    body: "{}",
  })).status, `${BASE_URL}/v1/stores/profiles/keys/player-4242`);
  check(refused === 403, "a read-only key cannot change anything");
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
