// A key's history (its versions, a diff between any two, a restore, whole
// or keeping parts of the current document), a player's erasure with a
// typed confirmation, and the audit trail: each through the server's
// fenced routes, which save and hand over a holder's session first.

import { call, may, seg } from "./api";
import { alertBox, bytes, h, screen, when } from "./dom";
import type { Json } from "./edit";

interface VersionInfo {
  version: string;
  saved_at_ms: number;
  size: number;
  deleted: boolean;
  user_ids: string[];
}

interface VersionDoc extends VersionInfo {
  data: Json | null;
}

interface AuditEntry {
  id: string;
  at_ms: number;
  actor: string;
  action: string;
  store?: string;
  key?: string;
  outcome?: string;
  details?: Json;
}

type Fail = (e: unknown) => HTMLElement;

/** Every leaf that differs between `a` and `b`, as `path: before → after`. */
export function differences(a: Json | undefined, b: Json | undefined, path = ""): string[] {
  const obj = (v: Json | undefined): v is { [k: string]: Json } => typeof v === "object" && v !== null && !Array.isArray(v);
  if (obj(a) && obj(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => differences(a[k], b[k], `${path}/${k}`));
  }
  const show = (v: Json | undefined) => (v === undefined ? "(absent)" : JSON.stringify(v));
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [`${path || "/"}: ${show(a)} → ${show(b)}`];
}

const keyPath = (store: string, key: string) => `/v1/stores/${seg(store)}/keys/${seg(key)}`;

export async function historyPage(store: string, key: string, failure: Fail): Promise<void> {
  const show = screen();
  const crumbs = h("nav", { "aria-label": "Breadcrumb" }, h("a", { href: "#/stores" }, "Stores"), " / ",
    h("a", { href: `#/keys/${seg(store)}` }, store), " / ", h("a", { href: `#/key/${seg(store)}/${seg(key)}` }, key));
  const heading = h("h1", {}, `History of ${key}`);
  show(crumbs, heading, h("p", { class: "muted" }, "Loading…"));
  let versions: VersionInfo[];
  try {
    versions = (await call<{ versions: VersionInfo[] }>("GET", `${keyPath(store, key)}/versions?limit=100`)).body.versions;
  } catch (e) {
    show(crumbs, heading, failure(e));
    return;
  }
  if (!versions.length) {
    show(crumbs, heading, h("p", { class: "muted" }, "No version of this key is kept."));
    return;
  }
  const option = (v: VersionInfo) =>
    h("option", { value: v.version }, `${v.version} · ${when(v.saved_at_ms)}${v.deleted ? " · deleted" : ""}`);
  const from = h("select", { id: "diff-from" }, ...versions.map(option)) as HTMLSelectElement;
  const to = h("select", { id: "diff-to" }, ...versions.map(option)) as HTMLSelectElement;
  if (versions.length > 1) from.selectedIndex = 1;
  const diffOut = h("div", { "aria-live": "polite", id: "diff" });
  const doc = async (v: string) =>
    (await call<VersionDoc>("GET", `${keyPath(store, key)}/versions/${seg(v)}`)).body.data ?? undefined;
  const diff = h("form", {
    class: "inline",
    onsubmit: async (e: Event) => {
      e.preventDefault();
      diffOut.replaceChildren();
      try {
        const lines = differences(await doc(from.value), await doc(to.value));
        diffOut.append(lines.length
          ? h("ul", { class: "diff" }, ...lines.map((l) => h("li", {}, l)))
          : h("p", { class: "muted" }, "The two versions hold the same document."));
      } catch (err) {
        diffOut.append(failure(err));
      }
    },
  }, h("label", { for: "diff-from" }, "From"), from, h("label", { for: "diff-to" }, "To"), to,
    h("button", { type: "submit" }, "Show differences"));

  const keep = h("input", { id: "keep", placeholder: "/inventory, /settings/volume", autocomplete: "off" }) as HTMLInputElement;
  const restoreOut = h("div", { "aria-live": "polite" });
  const restore = (v: string) => async () => {
    restoreOut.replaceChildren();
    const parts = keep.value.split(",").map((p) => p.trim()).filter(Boolean);
    try {
      // `from`: the version brought back; `version`: the new one it now is;
      // `holder`: what the key's holder did (`none`, `released`: it saved
      // and handed over first, or `fenced`).
      const { body } = await call<{ from: string; version: string; holder: string }>(
        "POST", `${keyPath(store, key)}/restore`, { version: v, keep: parts });
      const holder = body.holder === "none" ? "" : body.holder === "released"
        ? "; its holder saved and handed over first" : `; its holder was ${body.holder}`;
      restoreOut.append(alertBox(`Restored ${body.from}, now version ${body.version}${holder}.`, "ok"));
    } catch (e) {
      restoreOut.append(failure(e));
    }
  };
  const rows = versions.map((v) =>
    h("tr", {},
      h("td", {}, v.version),
      h("td", {}, when(v.saved_at_ms)),
      h("td", {}, v.deleted ? "deleted" : bytes(v.size)),
      h("td", {}, may("admin") ? h("button", { type: "button", class: "small", onclick: restore(v.version), "aria-label": `Restore version ${v.version}` }, "Restore") : "")));
  show(
    crumbs,
    heading,
    h("h2", {}, "Compare two versions"),
    diff,
    diffOut,
    h("h2", {}, "Versions"),
    may("admin") ? h("label", { for: "keep" }, "When restoring, keep these parts of the current document (JSON pointers, comma-separated)") : null,
    may("admin") ? keep : null,
    restoreOut,
    h("table", { id: "versions" },
      h("thead", {}, h("tr", {}, h("th", {}, "Version"), h("th", {}, "Saved"), h("th", {}, "Size"), h("th", {}, h("span", { class: "sr" }, "Restore")))),
      h("tbody", {}, ...rows)),
  );
}

/** The erase section of a player's page: type the user id to confirm. */
export function eraseSection(userId: string, failure: Fail): HTMLElement {
  const confirmBox = h("input", { id: "erase-confirm", autocomplete: "off" }) as HTMLInputElement;
  const out = h("div", { "aria-live": "polite" });
  return h("section", { "aria-labelledby": "erase-heading" },
    h("h2", { id: "erase-heading" }, "Erase this player"),
    h("p", { class: "muted" }, "Removes the user id and what it tags from every store (per store: delete or unlink), kept versions included. Sessions holding those keys end first."),
    h("form", {
      class: "inline",
      onsubmit: async (e: Event) => {
        e.preventDefault();
        out.replaceChildren();
        if (confirmBox.value !== userId) {
          out.append(alertBox(`Type the user id ${userId} exactly to confirm.`));
          return;
        }
        try {
          const { body } = await call("DELETE", `/v1/users/${seg(userId)}`);
          out.append(alertBox("Erased. The receipt:", "ok"), h("pre", { class: "json", id: "receipt", tabindex: "0" }, JSON.stringify(body, null, 2)));
        } catch (err) {
          out.append(failure(err));
        }
      },
    }, h("label", { for: "erase-confirm" }, `Type ${userId} to confirm`), confirmBox, h("button", { type: "submit", class: "danger" }, "Erase")),
    out);
}

export async function auditPage(params: URLSearchParams, failure: Fail): Promise<void> {
  const show = screen();
  const heading = h("h1", {}, "Audit trail");
  // By action, by the API key that acted, by the record it acted on.
  const fields = [
    ["action", "Action"],
    ["actor", "API key"],
    ["store", "Store"],
    ["key", "Key"],
  ].map(([name, label]) => ({
    name: name as string,
    label: label as string,
    input: h("input", { id: `audit-${name}`, value: params.get(name as string) ?? "", autocomplete: "off" }) as HTMLInputElement,
  }));
  const chosen = () => fields.map((f) => [f.name, f.input.value.trim()] as const).filter(([, v]) => v);
  const filter = h("form", {
    class: "inline",
    onsubmit: (e: Event) => {
      e.preventDefault();
      location.hash = `#/audit?${chosen().map(([k, v]) => `${k}=${seg(v)}`).join("&")}`;
    },
  }, ...fields.flatMap((f) => [h("label", { for: f.input.id }, f.label), f.input]),
    h("button", { type: "submit" }, "Filter"));
  show(h("nav", {}, h("a", { href: "#/stores" }, "Stores")), heading, filter, h("p", { class: "muted" }, "Loading…"));
  try {
    const q = new URLSearchParams({ limit: "200" });
    for (const [k, v] of chosen()) q.set(k, v);
    const entries: AuditEntry[] = [];
    let after: string | null = null;
    do {
      if (after) q.set("after", after);
      const page: { entries: AuditEntry[]; next_cursor: string | null } =
        (await call<{ entries: AuditEntry[]; next_cursor: string | null }>("GET", `/v1/audit?${q}`)).body;
      entries.push(...page.entries);
      after = page.next_cursor;
    } while (after && entries.length < 2000);
    const rows = entries.reverse().map((e) => h("tr", {},
      h("td", {}, when(e.at_ms)), h("td", {}, e.actor), h("td", {}, e.action),
      h("td", {}, e.store && e.key ? h("a", { href: `#/key/${seg(e.store)}/${seg(e.key)}` }, `${e.store} / ${e.key}`) : e.store ?? ""),
      h("td", {}, e.outcome ?? "")));
    show(h("nav", {}, h("a", { href: "#/stores" }, "Stores")), heading, filter, rows.length
      ? h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ...["When", "API key", "Action", "Target", "Outcome"].map((t) => h("th", {}, t)))), h("tbody", {}, ...rows))
      : h("p", { class: "muted" }, "No entry matches."));
  } catch (e) {
    show(h("nav", {}, h("a", { href: "#/stores" }, "Stores")), heading, filter, failure(e));
  }
}

interface StoreRestoreReport {
  at_ms: number;
  dry_run: boolean;
  keys: number;
  restored: number;
  deleted: number;
  unchanged: number;
  unknown: number;
  holders_ended: number;
  changes: { key: string; action: string; to: string | null }[];
  undo_at_ms: number;
}

/** A store back to a point in time: first its dry run's list, then, with the store's name typed, the restore. */
export function storeRestoreSection(store: string, failure: Fail): HTMLElement {
  const at = h("input", { id: "restore-at", type: "datetime-local", step: "1" }) as HTMLInputElement;
  const out = h("div", { "aria-live": "polite", id: "store-restore" });
  const run = async (dry: boolean, at_ms: number): Promise<StoreRestoreReport> =>
    (await call<StoreRestoreReport>("POST", `/v1/stores/${seg(store)}/restore`, { at_ms, dry_run: dry })).body;
  const summary = (r: StoreRestoreReport) =>
    r.dry_run
      ? `${r.keys} keys looked at: ${r.restored} to restore, ${r.deleted} to delete, ${r.unchanged} unchanged, ${r.unknown} without history (left alone)`
      : `${r.keys} keys looked at: ${r.restored} restored, ${r.deleted} deleted, ${r.unchanged} unchanged, ${r.unknown} without history (left alone)`;
  const preview = async (e: Event) => {
    e.preventDefault();
    out.replaceChildren();
    const at_ms = Date.parse(at.value);
    if (Number.isNaN(at_ms)) {
      out.append(alertBox("Choose a date and time first."));
      return;
    }
    try {
      const r = await run(true, at_ms);
      const confirmBox = h("input", { id: "store-restore-confirm", autocomplete: "off" }) as HTMLInputElement;
      const result = h("div", { "aria-live": "polite" });
      out.append(
        h("p", {}, `Dry run to ${when(at_ms)}: ${summary(r)}.`),
        r.changes.length
          ? h("ul", { class: "diff", id: "store-restore-changes" }, ...r.changes.map((c) => h("li", {}, `${c.key}: ${c.action}${c.to ? ` to ${c.to}` : ""}`)))
          : h("p", { class: "muted" }, "Nothing would change."),
        h("form", {
          class: "inline",
          onsubmit: async (ev: Event) => {
            ev.preventDefault();
            result.replaceChildren();
            if (confirmBox.value !== store) {
              result.append(alertBox(`Type the store's name ${store} exactly to confirm.`));
              return;
            }
            try {
              const done = await run(false, at_ms);
              result.append(alertBox(`Restored: ${summary(done)}; ${done.holders_ended} holders handed over first. To undo, restore the store to ${when(done.undo_at_ms)}.`, "ok"));
            } catch (err) {
              result.append(failure(err));
            }
          },
        }, h("label", { for: "store-restore-confirm" }, `Type ${store} to restore the whole store`), confirmBox,
          h("button", { type: "submit", class: "danger" }, "Restore the store")),
        result);
    } catch (err) {
      out.append(failure(err));
    }
  };
  return h("section", { "aria-labelledby": "store-restore-heading" },
    h("h2", { id: "store-restore-heading" }, "Restore the store to a point in time"),
    h("p", { class: "muted" }, "Every key back to its version at that moment (keys created since are deleted), through the fenced restore: holders save and hand over first. A dry run lists what would change."),
    h("form", { class: "inline", onsubmit: preview },
      h("label", { for: "restore-at" }, "Point in time (your local time)"), at,
      h("button", { type: "submit" }, "Preview (dry run)")),
    out);
}
