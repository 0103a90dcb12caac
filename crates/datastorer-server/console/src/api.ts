// The server's API as the console uses it: every call carries the
// signed-in API key as a bearer token (kept in this tab's sessionStorage,
// never in a URL), and every failure is an ApiError with the server's code.

const KEY = "datastorer.apiKey";
/** Who the key is ({name, role, stores}): not a secret, kept beside it. */
const WHO = "datastorer.who";

export type Role = "read" | "write" | "admin";

export interface Who {
  name: string;
  role: Role;
  stores: string[] | null;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export function signedIn(): boolean {
  return sessionStorage.getItem(KEY) !== null;
}

export function signOut(): void {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(WHO);
}

/** The signed-in key's name, role and stores (as the server said at sign-in). */
export function who(): Who | null {
  try {
    return JSON.parse(sessionStorage.getItem(WHO) ?? "null") as Who | null;
  } catch {
    return null;
  }
}

const RANK: Record<Role, number> = { read: 0, write: 1, admin: 2 };

/**
 * Whether the signed-in key has `role` (the console offers only what it
 * may do; the server checks every request all the same). Unknown: offered,
 * and the server's answer says.
 */
export function may(role: Role): boolean {
  const w = who();
  return w === null || RANK[w.role] >= RANK[role];
}

/** Checks `apiKey` against the server (an empty one: a server without keys) and keeps it for this tab. */
export async function signIn(apiKey: string): Promise<void> {
  sessionStorage.setItem(KEY, apiKey);
  try {
    const { body } = await call<Who>("GET", "/v1/whoami");
    sessionStorage.setItem(WHO, JSON.stringify(body));
  } catch (e) {
    signOut();
    throw e;
  }
}

export interface Answer<T> {
  body: T;
  headers: Headers;
}

export async function call<T = unknown>(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Answer<T>> {
  const key = sessionStorage.getItem(KEY);
  // Writes marked as the console's land in the server's audit trail.
  const all: Record<string, string> = { Accept: "application/json", "Datastorer-Origin": "console", ...headers };
  if (key) all["Authorization"] = `Bearer ${key}`;
  const init: RequestInit = { method, headers: all, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    all["Content-Type"] ??= "application/json";
    init.body = JSON.stringify(body);
  }
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", `the server cannot be reached: ${String(e)}`);
  }
  const text = await response.text();
  let parsed: unknown = null;
  if (text.length > 0) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!response.ok) {
    const o = (parsed ?? {}) as { code?: string; message?: string };
    throw new ApiError(response.status, o.code ?? `http_${response.status}`, o.message ?? String(parsed ?? response.statusText));
  }
  return { body: parsed as T, headers: response.headers };
}

/** A path segment, percent-encoded. */
export const seg = (s: string): string => encodeURIComponent(s);

export interface StoreList {
  stores: string[];
  next_cursor: string | null;
}

export interface KeyList {
  keys: string[];
  next_cursor: string | null;
}

export interface Lease {
  owner: string;
  expires_at_ms: number;
}

export interface RecordView {
  store: string;
  key: string;
  data: unknown;
  metadata: Record<string, unknown>;
  user_ids: string[];
  epoch: number;
  revision: number;
  lease: Lease | null;
  /** The client (game server) holding it through this server, if one does. */
  holder_client: string | null;
}

export interface UserRecords {
  user_id: string;
  records: { store: string; key: string }[];
}
