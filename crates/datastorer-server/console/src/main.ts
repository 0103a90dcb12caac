// The console: sign in with an API key, then browse stores and keys, look
// at a record (its data, metadata, user ids, size, revision, epoch and who
// holds it) and find a player's records by user id. Routes live in the
// URL's fragment (#/stores, #/keys/STORE, #/key/STORE/KEY, #/user/ID),
// never the API key.

import { ApiError, call, may, seg, signIn, signOut, signedIn, who } from "./api";
import type { KeyList, RecordView, StoreList, UserRecords } from "./api";
import { alertBox, bytes, h, navigated, screen, when } from "./dom";
import { applyAfterHandover, deleteAfterHandover, deleteFree, saveFree, sendToHolder } from "./edit";
import { healthPage, leaveHealth } from "./health";
import { auditPage, eraseSection, historyPage, storeRestoreSection } from "./history";
import type { Json, Outcome } from "./edit";

/** The server's default document limit (`max_body_bytes`). */
const DOCUMENT_LIMIT = 4 * 1024 * 1024;
const PAGE = 50;
/** Beyond this, a document is shown in part until asked for whole. */
const LARGE = 256 * 1024;

function link(href: string, text: string): HTMLElement {
  return h("a", { href }, text);
}

function failure(e: unknown): HTMLElement {
  if (e instanceof ApiError) {
    if (e.status === 401 && signedIn()) {
      // The key was removed from the server meanwhile.
      signOut();
      location.hash = "#/signin";
    }
    return alertBox(`${e.message} (${e.code})`);
  }
  return alertBox(String(e));
}

function signInPage(): void {
  const show = screen();
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", spellcheck: "false" }) as HTMLInputElement;
  const message = h("div", { "aria-live": "polite" });
  const form = h(
    "form",
    {
      onsubmit: async (e: Event) => {
        e.preventDefault();
        message.replaceChildren();
        try {
          await signIn(input.value.trim());
          location.hash = "#/stores";
        } catch (err) {
          message.append(failure(err));
        }
      },
    },
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Sign in"),
  );
  show(h("h1", {}, "Sign in"), h("p", {}, "The key stays in this tab and is sent only to this server."), form, message);
  input.focus();
}

interface StoreUsage {
  keys: number;
  bytes: number;
  versions: number;
  version_bytes: number;
  measured_at_ms: number;
}

/** Counts each listed store (a few at a time) and fills in its row as the answers come. */
async function fillUsage(names: string[], cells: Map<string, HTMLElement[]>, fresh: boolean, alive: () => boolean): Promise<void> {
  const queue = [...names];
  const worker = async () => {
    for (let name = queue.shift(); name !== undefined && alive(); name = queue.shift()) {
      const row = cells.get(name) ?? [];
      try {
        const u = (await call<StoreUsage>("GET", `/v1/stores/${seg(name)}/usage${fresh ? "?fresh=true" : ""}`)).body;
        const values = [u.keys.toLocaleString("en"), bytes(u.bytes), u.versions.toLocaleString("en"), bytes(u.version_bytes)];
        row.forEach((cell, i) => {
          cell.textContent = values[i] ?? "";
        });
        row[0]?.setAttribute("title", `counted ${when(u.measured_at_ms)}`);
      } catch (e) {
        row.forEach((cell) => {
          cell.textContent = "—";
        });
        row[0]?.setAttribute("title", e instanceof ApiError ? `${e.message} (${e.code})` : String(e));
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

async function storesPage(params: URLSearchParams): Promise<void> {
  const show = screen();
  const cursor = params.get("cursor");
  show(h("h1", {}, "Stores"), h("p", { class: "muted" }, "Loading…"));
  try {
    const q = cursor ? `&cursor=${seg(cursor)}` : "";
    const page = (await call<StoreList>("GET", `/v1/stores?limit=${PAGE}${q}`)).body;
    const names = page.stores;
    const cells = new Map<string, HTMLElement[]>();
    const rows = names.map((n) => {
      const row = [0, 1, 2, 3].map(() => h("td", { class: "num" }, "…"));
      cells.set(n, row);
      return h("tr", {}, h("td", {}, link(`#/keys/${seg(n)}`, n)), ...row);
    });
    const recount = h("button", { type: "button", id: "recount" }, "Count again");
    recount.addEventListener("click", () => void fillUsage(names, cells, true, show.current));
    const list = names.length
      ? h(
          "table",
          { id: "stores" },
          h("caption", { class: "muted" }, "Counted on the server, without reading a document; a count is reused for 30 s."),
          h("thead", {}, h("tr", {}, ...["Store", "Keys", "Size", "Versions kept", "History size"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, ...rows),
        )
      : h("p", { class: "muted" }, "No store holds a record yet.");
    const next = page.next_cursor ? link(`#/stores?cursor=${seg(page.next_cursor)}`, "Next page") : null;
    show(h("h1", {}, "Stores"), may("admin") ? findUser() : null, list, h("div", { class: "actions" }, next, names.length ? recount : null));
    await fillUsage(names, cells, false, show.current);
  } catch (e) {
    show(h("h1", {}, "Stores"), failure(e));
  }
}

function findUser(): HTMLElement {
  const input = h("input", { id: "user-id", inputmode: "numeric", autocomplete: "off" }) as HTMLInputElement;
  return h(
    "form",
    {
      class: "inline",
      role: "search",
      onsubmit: (e: Event) => {
        e.preventDefault();
        if (input.value.trim()) location.hash = `#/user/${seg(input.value.trim())}`;
      },
    },
    h("label", { for: "user-id" }, "Find a player by user id"),
    input,
    h("button", { type: "submit" }, "Find"),
  );
}

async function keysPage(store: string, params: URLSearchParams): Promise<void> {
  const show = screen();
  const prefix = params.get("prefix") ?? "";
  const cursor = params.get("cursor");
  const heading = h("h1", {}, `Keys of ${store}`);
  const input = h("input", { id: "prefix", value: prefix, autocomplete: "off" }) as HTMLInputElement;
  const search = h(
    "form",
    {
      class: "inline",
      role: "search",
      onsubmit: (e: Event) => {
        e.preventDefault();
        location.hash = `#/keys/${seg(store)}?prefix=${seg(input.value)}`;
      },
    },
    h("label", { for: "prefix" }, "Key prefix"),
    input,
    h("button", { type: "submit" }, "Search"),
  );
  show(h("nav", { "aria-label": "Breadcrumb" }, link("#/stores", "Stores")), heading, search, h("p", { class: "muted" }, "Loading…"));
  try {
    const q = `prefix=${seg(prefix)}&limit=${PAGE}${cursor ? `&cursor=${seg(cursor)}` : ""}`;
    const page = (await call<KeyList>("GET", `/v1/stores/${seg(store)}/keys?${q}`)).body;
    const list = page.keys.length
      ? h("ul", { class: "list", id: "keys" }, ...page.keys.map((k) => h("li", {}, link(`#/key/${seg(store)}/${seg(k)}`, k))))
      : h("p", { class: "muted" }, prefix ? `No key starts with “${prefix}”.` : "This store is empty.");
    const next = page.next_cursor
      ? link(`#/keys/${seg(store)}?prefix=${seg(prefix)}&cursor=${seg(page.next_cursor)}`, "Next page")
      : null;
    show(h("nav", { "aria-label": "Breadcrumb" }, link("#/stores", "Stores")), heading, search, list, next, may("admin") ? storeRestoreSection(store, failure) : null);
  } catch (e) {
    show(h("nav", {}, link("#/stores", "Stores")), heading, search, failure(e));
  }
}

function field(name: string, value: string | Node): HTMLElement[] {
  return [h("dt", {}, name), h("dd", {}, value)];
}

/** The edit box of a record: what it offers depends on whether a game server holds the key. */
function editor(r: RecordView, etag: string, held: boolean, done: (o: Outcome) => void): HTMLElement {
  const box = h("textarea", { id: "edit", rows: "12", spellcheck: "false" }) as HTMLTextAreaElement;
  const text = JSON.stringify(r.data, null, 2) ?? "null";
  // A large document goes into the box only when asked for: megabytes of
  // text in a textarea make every later repaint slow.
  const load = h("button", { type: "button", id: "load-editor" }, `Load the document (${bytes(text.length)}) into the editor`);
  if (text.length <= LARGE) box.value = text;
  load.addEventListener("click", () => {
    box.value = text;
    load.remove();
  });
  const status = h("div", { "aria-live": "polite" });
  const act = (what: (edited: Json) => Promise<Outcome>) => async () => {
    status.replaceChildren();
    let edited: Json;
    try {
      edited = JSON.parse(box.value) as Json;
    } catch (e) {
      status.append(alertBox(`Nothing sent: the data is not valid JSON (${String(e)}).`));
      return;
    }
    try {
      const outcome = await what(edited);
      if (outcome.ok) done(outcome);
      else status.append(alertBox(outcome.message));
    } catch (e) {
      status.append(failure(e));
    }
  };
  const buttons = held
    ? [
        h("button", { type: "button", id: "send-to-holder", onclick: act((d) => sendToHolder(r, d)) }, "Send to the holder as a message"),
        h("button", { type: "button", id: "hand-over", onclick: act((d) => applyAfterHandover(r, d, "console")) }, "Ask the holder to hand over, then apply"),
      ]
    : [h("button", { type: "button", id: "save", onclick: act((d) => saveFree(r, etag, d)) }, "Save")];
  const help = held
    ? "A game server holds this key: a change written now would be overwritten by its next save. Send it to the holder, or ask it to hand over first."
    : "Saved only if the record is still the version shown here.";
  return h(
    "section",
    { "aria-labelledby": "edit-heading" },
    h("h2", { id: "edit-heading" }, "Change the data"),
    h("p", { class: "muted" }, help),
    h("label", { for: "edit" }, "Data (JSON)"),
    text.length > LARGE ? load : null,
    box,
    h("div", { class: "actions" }, ...buttons),
    status,
  );
}

/** `show` is the page's own when an edit's outcome redraws it: dropped if the user has moved on. */
/** Deleting the key, by the same rules as an edit; the key's name typed to confirm. */
function deleteSection(r: RecordView, etag: string, held: boolean, done: (o: Outcome) => void): HTMLElement {
  const confirm = h("input", { id: "delete-confirm", autocomplete: "off", spellcheck: "false" }) as HTMLInputElement;
  const status = h("div", { "aria-live": "polite" });
  const button = h(
    "button",
    { type: "button", id: "delete", class: "danger" },
    held ? "Ask the holder to hand over, then delete" : "Delete this key",
  );
  button.addEventListener("click", async () => {
    status.replaceChildren();
    if (confirm.value !== r.key) {
      status.append(alertBox(`Nothing deleted: type the key's name (${r.key}) exactly to confirm.`));
      return;
    }
    try {
      const outcome = held ? await deleteAfterHandover(r, "console") : await deleteFree(r, etag);
      if (outcome.ok) done(outcome);
      else status.append(alertBox(outcome.message));
    } catch (e) {
      status.append(failure(e));
    }
  });
  return h(
    "section",
    { "aria-labelledby": "delete-heading" },
    h("h2", { id: "delete-heading" }, "Delete the key"),
    h("p", { class: "muted" }, held
      ? "A game server holds this key: it saves and hands over first; the key is deleted only if nothing changed since this page loaded. The delete is kept as a version, so the history can bring the key back."
      : "Deleted only if the record is still the version shown here. The delete is kept as a version, so the history can bring the key back."),
    h("label", { for: "delete-confirm" }, `Type ${r.key} to confirm`),
    confirm,
    h("div", { class: "actions" }, button),
    status,
  );
}

async function keyPage(store: string, key: string, notice?: Outcome, show = screen()): Promise<void> {
  const crumbs = h(
    "nav",
    { "aria-label": "Breadcrumb" },
    link("#/stores", "Stores"),
    " / ",
    link(`#/keys/${seg(store)}`, store),
    " · ",
    link(`#/history/${seg(store)}/${seg(key)}`, "History"),
    may("admin") ? " · " : null,
    may("admin") ? link(`#/audit?store=${seg(store)}&key=${seg(key)}`, "Audit") : null,
  );
  const heading = h("h1", {}, key);
  show(crumbs, heading, h("p", { class: "muted" }, "Loading…"));
  try {
    // The record and what waits for its holder (a read: nothing is taken), asked together.
    const [{ body: r, headers }, waiting] = await Promise.all([
      call<RecordView>("GET", `/v1/stores/${seg(store)}/keys/${seg(key)}`),
      call<{ messages: { id: number; sent_at_ms: number; message: unknown }[] }>(
        "GET",
        `/v1/stores/${seg(store)}/keys/${seg(key)}/messages`,
      )
        .then((a) => a.body.messages)
        .catch(() => null),
    ]);
    const data = JSON.stringify(r.data, null, 2) ?? "null";
    const view = h("pre", { class: "json", id: "data", tabindex: "0", "aria-label": "the record's data" }, data.length > LARGE ? data.slice(0, LARGE) : data);
    const whole = data.length > LARGE
      ? h("button", {
          type: "button",
          id: "show-whole",
          onclick: (e: Event) => {
            view.textContent = data;
            (e.currentTarget as HTMLElement).remove();
          },
        }, `Showing the first ${bytes(LARGE)} of ${bytes(data.length)}: show the whole document`)
      : null;
    const size = new TextEncoder().encode(JSON.stringify(r.data) ?? "").length;
    const share = (100 * size) / DOCUMENT_LIMIT;
    const held = r.lease !== null && r.lease.expires_at_ms > Date.now();
    const by = r.holder_client ? `${r.holder_client} through server ${r.lease?.owner}` : `server ${r.lease?.owner}`;
    const holder = r.lease && held ? `held by ${by}, epoch ${r.epoch}, until ${when(r.lease.expires_at_ms)}` : "free: no session holds it";
    const etag = headers.get("ETag") ?? "";
    const facts = h(
      "dl",
      { class: "facts" },
      ...field("Revision", String(r.revision)),
      ...field("Epoch", String(r.epoch)),
      ...field("Version tag", headers.get("ETag") ?? "—"),
      ...field("Lease", holder),
      ...field(
        "Size",
        h("span", {}, `${bytes(size)} of ${bytes(DOCUMENT_LIMIT)} (${share.toFixed(share < 1 ? 2 : 0)} %) `, h("meter", { min: "0", max: "100", value: String(share), "aria-label": "share of the document limit" })),
      ),
      ...field("User ids", r.user_ids.length ? r.user_ids.join(", ") : "none"),
    );
    show(
      crumbs,
      heading,
      notice ? alertBox(notice.message, notice.ok ? "ok" : "error") : null,
      facts,
      h("h2", {}, "Data"),
      whole,
      view,
      h("h2", {}, "Metadata"),
      h("pre", { class: "json", id: "metadata", tabindex: "0" }, JSON.stringify(r.metadata, null, 2) ?? "{}"),
      h("h2", {}, `Waiting messages${waiting ? ` (${waiting.length})` : ""}`),
      waiting === null
        ? h("p", { class: "muted" }, "The waiting messages could not be read.")
        : waiting.length
          ? h("ul", { class: "list", id: "messages" }, ...waiting.map((m) => h("li", {}, `#${m.id} · ${when(m.sent_at_ms)} · ${JSON.stringify(m.message)}`)))
          : h("p", { class: "muted" }, "None."),
      ...(may("write")
        ? [
            editor(r, etag, held, (outcome) => void keyPage(store, key, outcome, show)),
            deleteSection(r, etag, held, (outcome) => void keyPage(store, key, outcome, show)),
          ]
        : [h("p", { class: "muted", id: "read-only" }, `Signed in as ${who()?.name ?? "a read-only key"} (read-only): this key can look, not change.`)]),
    );
  } catch (e) {
    if (notice?.ok && e instanceof ApiError && e.code === "no_such_key") {
      // What the notice reports (a delete) is why the record is gone.
      show(crumbs, heading, alertBox(notice.message, "ok"), h("p", { class: "muted" }, "No record is stored for this key now."));
    } else {
      show(crumbs, heading, notice ? alertBox(notice.message, notice.ok ? "ok" : "error") : null, failure(e));
    }
  }
}

async function userPage(userId: string): Promise<void> {
  const show = screen();
  const heading = h("h1", {}, `Player ${userId}`);
  show(h("nav", {}, link("#/stores", "Stores")), heading, h("p", { class: "muted" }, "Loading…"));
  try {
    const r = (await call<UserRecords>("GET", `/v1/users/${seg(userId)}`)).body;
    const list = r.records.length
      ? h(
          "ul",
          { class: "list", id: "user-records" },
          ...r.records.map((x) => h("li", {}, link(`#/key/${seg(x.store)}/${seg(x.key)}`, `${x.store} / ${x.key}`))),
        )
      : h("p", { class: "muted" }, "No record is tagged with this user id.");
    show(h("nav", {}, link("#/stores", "Stores")), heading, list, eraseSection(userId, failure));
  } catch (e) {
    show(h("nav", {}, link("#/stores", "Stores")), heading, failure(e));
  }
}

function route(): void {
  navigated();
  leaveHealth();
  const raw = location.hash.replace(/^#\/?/, "");
  const [path = "", query = ""] = raw.split("?");
  const parts = path.split("/").map((p) => decodeURIComponent(p));
  const signOutButton = document.getElementById("sign-out");
  if (signOutButton) signOutButton.hidden = !signedIn();
  // The audit trail is an admin's to read.
  const auditLink = document.getElementById("audit-link");
  if (auditLink) auditLink.hidden = !signedIn() || !may("admin");
  if (!signedIn() || parts[0] === "signin") {
    signInPage();
    return;
  }
  const params = new URLSearchParams(query);
  switch (parts[0]) {
    case "keys":
      void keysPage(parts[1] ?? "", params);
      break;
    case "key":
      void keyPage(parts[1] ?? "", parts.slice(2).join("/"));
      break;
    case "user":
      void userPage(parts[1] ?? "");
      break;
    case "history":
      void historyPage(parts[1] ?? "", parts.slice(2).join("/"), failure);
      break;
    case "audit":
      void auditPage(params, failure);
      break;
    case "health":
      void healthPage(failure);
      break;
    default:
      void storesPage(params);
  }
}

document.getElementById("sign-out")?.addEventListener("click", () => {
  signOut();
  location.hash = "#/signin";
  route();
});
window.addEventListener("hashchange", route);
route();
