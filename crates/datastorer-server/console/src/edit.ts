// Changing a record from the console, never behind a holder's back.
//
// - A key nobody holds: the whole document `PUT` with `If-Match` on the
//   version the page shows, so a stale page gets a clear conflict and
//   never overwrites a newer save.
// - A key a game server holds: either the change goes to the holder as a
//   message (`{"console_edit": {patch, base_revision}}`; the game applies
//   it, the console says so), or the console asks the holder to hand over
//   (`request_release`: the holder saves its last change and lets go),
//   then applies the edit as a merge patch only if nothing the editor
//   changed was also changed meanwhile, and releases. Either way nothing
//   the holder saved is lost, and the console says which happened.

import { ApiError, call, seg } from "./api";
import type { RecordView } from "./api";

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const isObject = (v: Json | undefined): v is { [k: string]: Json } =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const same = (a: Json | undefined, b: Json | undefined): boolean => JSON.stringify(a) === JSON.stringify(b);

/** The JSON merge patch (RFC 7396) turning `from` into `to`; `undefined` when equal. */
export function mergePatch(from: Json, to: Json): Json | undefined {
  if (!isObject(from) || !isObject(to)) return same(from, to) ? undefined : to;
  const patch: { [k: string]: Json } = {};
  for (const k of Object.keys(from)) if (!(k in to)) patch[k] = null;
  for (const [k, v] of Object.entries(to)) {
    const sub = k in from ? mergePatch(from[k] as Json, v) : v;
    if (sub !== undefined) patch[k] = sub;
  }
  return Object.keys(patch).length ? patch : undefined;
}

/** The paths `patch` changes whose value in `now` is no longer the one in `base`. */
export function conflicts(base: Json, now: Json, patch: Json, path = ""): string[] {
  if (!isObject(patch)) return same(base, now) ? [] : [path || "(the whole document)"];
  const out: string[] = [];
  for (const [k, v] of Object.entries(patch)) {
    const b = isObject(base) ? base[k] : undefined;
    const n = isObject(now) ? now[k] : undefined;
    if (isObject(v) && isObject(b ?? null) && isObject(n ?? null)) {
      out.push(...conflicts(b as Json, n as Json, v, `${path}/${k}`));
    } else if (!same(b, n)) {
      out.push(`${path}/${k}`);
    }
  }
  return out;
}

export type Outcome = { ok: true; message: string } | { ok: false; message: string };

const recordPath = (r: RecordView) => `/v1/stores/${seg(r.store)}/keys/${seg(r.key)}`;

/** A key nobody holds: replaced only if it is still the version shown. */
export async function saveFree(r: RecordView, etag: string, edited: Json): Promise<Outcome> {
  try {
    const { body } = await call<{ revision: number }>("PUT", recordPath(r), edited, { "If-Match": etag });
    return { ok: true, message: `Saved: revision ${body.revision}.` };
  } catch (e) {
    return refused(e, {
      precondition_failed: "Not saved: the record changed since this page loaded. Reload to see it; your edit is still in the box.",
      lease_held: "Not saved: a game server took the key meanwhile. Reload, then send the change to its holder.",
    });
  }
}

/** A conditional write's refusal in the page's words (`messages` by error code); any other error goes on up. */
function refused(e: unknown, messages: Record<string, string>): Outcome {
  const message = e instanceof ApiError ? messages[e.code] : undefined;
  if (message === undefined) throw e;
  return { ok: false, message };
}

/** A held key: the change as a message to its holder. */
export async function sendToHolder(r: RecordView, edited: Json): Promise<Outcome> {
  const patch = mergePatch(r.data as Json, edited);
  if (patch === undefined) return { ok: false, message: "Nothing changed." };
  const { body } = await call<{ id: number }>("POST", `${recordPath(r)}/messages`, {
    console_edit: { patch, base_revision: r.revision },
  });
  return { ok: true, message: `Delivered to the holder as message ${body.id}; the game server applies it (nothing was written to the record).` };
}

/** A held key: ask for a hand-over, then apply the edit if it does not collide. */
export async function applyAfterHandover(r: RecordView, edited: Json, editor: string): Promise<Outcome> {
  const patch = mergePatch(r.data as Json, edited);
  if (patch === undefined) return { ok: false, message: "Nothing changed." };
  const session = `${recordPath(r)}/session`;
  const { body: opened } = await call<RecordView & { lease_token: string }>("POST", session, {
    client_id: `console:${editor}`,
    policy: "request_release",
    grace_ms: 3000,
    timeout_ms: 15000,
  });
  const token = { "Lease-Token": opened.lease_token };
  const clash = conflicts(r.data as Json, opened.data as Json, patch);
  if (clash.length) {
    await call("DELETE", session, undefined, token);
    return {
      ok: false,
      message: `Not applied: the holder changed ${clash.join(", ")} since this page loaded (its change is kept). Reload and redo your edit.`,
    };
  }
  await call("PATCH", `${session}/data?save=normal`, patch, { ...token, "Content-Type": "application/merge-patch+json" });
  const { body: released } = await call<{ revision: number }>("POST", `${session}/release`, undefined, token);
  return { ok: true, message: `Applied after the holder handed over (its last change kept): revision ${released.revision}.` };
}

/** A key nobody holds: deleted only if it is still the version shown. */
export async function deleteFree(r: RecordView, etag: string): Promise<Outcome> {
  try {
    await call("DELETE", recordPath(r), undefined, { "If-Match": etag });
    return { ok: true, message: `Deleted ${r.key} (kept as a version: the history can bring it back).` };
  } catch (e) {
    return refused(e, {
      precondition_failed: "Not deleted: the record changed since this page loaded. Reload to see it.",
      lease_held: "Not deleted: a game server took the key meanwhile. Reload, then ask it to hand over.",
    });
  }
}

/** A held key: ask for a hand-over, then delete if nothing changed since the page loaded. */
export async function deleteAfterHandover(r: RecordView, editor: string): Promise<Outcome> {
  const session = `${recordPath(r)}/session`;
  const { body: opened } = await call<RecordView & { lease_token: string; epoch: number }>("POST", session, {
    client_id: `console:${editor}`,
    policy: "request_release",
    grace_ms: 3000,
    timeout_ms: 15000,
  });
  const token = { "Lease-Token": opened.lease_token };
  if (JSON.stringify(opened.data) !== JSON.stringify(r.data)) {
    await call("DELETE", session, undefined, token);
    return { ok: false, message: "Not deleted: the holder saved changes since this page loaded (they are kept). Reload to see them." };
  }
  const { body: released } = await call<{ revision: number }>("POST", `${session}/release`, undefined, token);
  try {
    await call("DELETE", recordPath(r), undefined, { "If-Match": `"${opened.epoch}.${released.revision}"` });
  } catch (e) {
    if (e instanceof ApiError && (e.code === "precondition_failed" || e.code === "lease_held")) {
      return { ok: false, message: "Not deleted: the key was written or taken again right after the hand-over. Reload to see it." };
    }
    throw e;
  }
  return { ok: true, message: `The holder handed over, then ${r.key} was deleted (kept as a version: the history can bring it back).` };
}
