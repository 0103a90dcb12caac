// The console: sign in with an API key, then browse stores and keys, look
// at a record (its data, metadata, user ids, size, revision, epoch and who
// holds it) and find a player's records by user id. Routes live in the
// URL's fragment (#/stores, #/keys/STORE, #/key/STORE/KEY, #/user/ID),
// never the API key.

import { ApiError, call, seg, signIn, signOut, signedIn } from "./api";
import type { KeyList, RecordView, StoreList, UserRecords } from "./api";
import { alertBox, bytes, h, show, when } from "./dom";
import { applyAfterHandover, saveFree, sendToHolder } from "./edit";
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

async function storesPage(): Promise<void> {
  show(h("h1", {}, "Stores"), h("p", { class: "muted" }, "Loading…"));
  try {
    const names: string[] = [];
    let cursor: string | null = null;
    do {
      const q: string = cursor ? `&cursor=${seg(cursor)}` : "";
      const page: StoreList = (await call<StoreList>("GET", `/v1/stores?limit=1000${q}`)).body;
      names.push(...page.stores);
      cursor = page.next_cursor;
    } while (cursor && names.length < 10_000);
    const list = names.length
      ? h("ul", { class: "list", id: "stores" }, ...names.map((n) => h("li", {}, link(`#/keys/${seg(n)}`, n))))
      : h("p", { class: "muted" }, "No store holds a record yet.");
    show(h("h1", {}, "Stores"), findUser(), list);
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
    show(h("nav", { "aria-label": "Breadcrumb" }, link("#/stores", "Stores")), heading, search, list, next, storeRestoreSection(store, failure));
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

async function keyPage(store: string, key: string, notice?: Outcome): Promise<void> {
  const crumbs = h(
    "nav",
    { "aria-label": "Breadcrumb" },
    link("#/stores", "Stores"),
    " / ",
    link(`#/keys/${seg(store)}`, store),
    " · ",
    link(`#/history/${seg(store)}/${seg(key)}`, "History"),
  );
  const heading = h("h1", {}, key);
  show(crumbs, heading, h("p", { class: "muted" }, "Loading…"));
  try {
    const { body: r, headers } = await call<RecordView>("GET", `/v1/stores/${seg(store)}/keys/${seg(key)}`);
    // What waits for the key's holder (a read: nothing is taken).
    const waiting = await call<{ messages: { id: number; sent_at_ms: number; message: unknown }[] }>(
      "GET",
      `/v1/stores/${seg(store)}/keys/${seg(key)}/messages`,
    )
      .then((a) => a.body.messages)
      .catch(() => null);
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
      editor(r, etag, held, (outcome) => void keyPage(store, key, outcome)),
    );
  } catch (e) {
    show(crumbs, heading, failure(e));
  }
}

async function userPage(userId: string): Promise<void> {
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
  leaveHealth();
  const raw = location.hash.replace(/^#\/?/, "");
  const [path = "", query = ""] = raw.split("?");
  const parts = path.split("/").map((p) => decodeURIComponent(p));
  const signOutButton = document.getElementById("sign-out");
  if (signOutButton) signOutButton.hidden = !signedIn();
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
      void storesPage();
  }
}

document.getElementById("sign-out")?.addEventListener("click", () => {
  signOut();
  location.hash = "#/signin";
  route();
});
window.addEventListener("hashchange", route);
route();
