// Live health: the server's counters (`GET /v1/stats`) read every second
// and drawn as rates with uPlot (chosen for size and speed: ~50 kB, canvas,
// no dependencies), the last two minutes of each, with tables of the
// busiest routes and of the API keys' budgets and their clients'. The page
// stops polling when it is left.

import uPlot from "uplot";
import { call } from "./api";
import { h, screen } from "./dom";

interface Stats {
  at_ms: number;
  routes: Record<string, { requests: number; errors: number }>;
  saves: number;
  save_us: number;
  lease_waits: number;
  queue: { emergency: number; normal: number; in_flight: number; retrying: number; writes: number; flushes: number };
  client_sessions: number;
  webhooks_delivered: number;
  api_budgets?: KeyBudget[];
}

interface Reading {
  used: number;
  served: number;
  refused: number;
  /** How long the bucket has existed (ms). */
  age_ms: number;
}

interface KeyBudget {
  key: string;
  requests_per_minute: number | null;
  client_requests_per_minute: number | null;
  total: Reading | null;
  clients: (Reading & { client: string })[];
  client_count: number;
}

const POINTS = 120;
let timer: number | undefined;

/** Stops the page's polling (the router calls it on every route). */
export function leaveHealth(): void {
  if (timer !== undefined) window.clearInterval(timer);
  timer = undefined;
}

interface Chart {
  title: string;
  labels: string[];
  values: (prev: Stats, now: Stats, dt: number) => number[];
}

const sum = (s: Stats, f: (r: { requests: number; errors: number }) => number) =>
  Object.values(s.routes).reduce((a, r) => a + f(r), 0);

const CHARTS: Chart[] = [
  {
    title: "Requests per second",
    labels: ["requests/s", "errors/s"],
    values: (p, n, dt) => [(sum(n, (r) => r.requests) - sum(p, (r) => r.requests)) / dt, (sum(n, (r) => r.errors) - sum(p, (r) => r.errors)) / dt],
  },
  {
    title: "Durable saves",
    labels: ["saves/s", "mean latency (ms)"],
    values: (p, n, dt) => {
      const saves = n.saves - p.saves;
      return [saves / dt, saves > 0 ? (n.save_us - p.save_us) / saves / 1000 : 0];
    },
  },
  {
    title: "Queue depth by lane",
    labels: ["emergency", "normal", "in flight", "retrying"],
    values: (_p, n) => [n.queue.emergency, n.queue.normal, n.queue.in_flight, n.queue.retrying],
  },
  {
    title: "Sessions and hand-offs",
    labels: ["sessions held", "lease waits/s", "webhook deliveries/s"],
    values: (p, n, dt) => [n.client_sessions, (n.lease_waits - p.lease_waits) / dt, (n.webhooks_delivered - p.webhooks_delivered) / dt],
  },
];

/**
 * The budgets chart: a line per budgeted key for its own bucket, and one
 * for its most drawn client where its clients have budgets (the keys and
 * their budgets are fixed by the server's config, so the lines are too).
 */
function budgetChart(keys: KeyBudget[]): Chart {
  const lines = keys.flatMap((k) => [
    ...(k.requests_per_minute !== null ? [{ label: `${k.key} (%)`, key: k.key, of: (b: KeyBudget) => b.total?.used ?? 0 }] : []),
    ...(k.client_requests_per_minute !== null
      ? [{ label: `${k.key}, busiest client (%)`, key: k.key, of: (b: KeyBudget) => Math.max(0, ...b.clients.map((c) => c.used)) }]
      : []),
  ]);
  return {
    title: "API key budgets used",
    labels: lines.map((l) => l.label),
    values: (_p, n) =>
      lines.map((l) => {
        const b = n.api_budgets?.find((x) => x.key === l.key);
        return b ? 100 * l.of(b) : 0;
      }),
  };
}

const rate = (now: number, before: number | undefined, dt: number) => (now - (before ?? now)) / dt;
/** A rate that may not be known: `—` for a client first shown now that existed before the last reading. */
const rateText = (now: number, before: number | undefined, dt: number) => (before === undefined ? "—" : fixed(rate(now, before, dt)));
const fixed = (v: number) => v.toFixed(v >= 100 ? 0 : 1);

/** The busiest routes in the last second. */
function routesTable(prev: Stats, now: Stats, dt: number): HTMLElement {
  const rows = Object.entries(now.routes)
    .map(([route, r]) => ({
      route,
      requests: rate(r.requests, prev.routes[route]?.requests ?? 0, dt),
      errors: rate(r.errors, prev.routes[route]?.errors ?? 0, dt),
    }))
    .filter((r) => r.requests > 0 || r.errors > 0)
    .sort((a, b) => b.requests - a.requests || a.route.localeCompare(b.route))
    .slice(0, 10);
  if (!rows.length) return h("p", { class: "muted" }, "No request in the last second.");
  return h("table", { id: "routes" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Route"), h("th", { scope: "col" }, "requests/s"), h("th", { scope: "col" }, "errors/s"))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, h("td", {}, r.route), h("td", {}, fixed(r.requests)), h("td", {}, fixed(r.errors))))));
}

/** Each budgeted key and its most drawn clients: the share of the burst spent now, served and refused per second. */
function budgetsTable(prev: Stats, now: Stats, dt: number): HTMLElement {
  const keys = now.api_budgets ?? [];
  if (!keys.length) return h("p", { class: "muted" }, "No API key this key may see has a request budget.");
  const row = (who: string, limit: string, r: Reading, before: Reading | undefined) =>
    h("tr", {},
      h("td", {}, who),
      h("td", {}, limit),
      h("td", {}, h("meter", { min: "0", max: "100", value: String(100 * r.used), "aria-label": `${who}: share of the budget used` }), ` ${fixed(100 * r.used)} %`),
      h("td", {}, rateText(r.served, before?.served, dt)),
      h("td", {}, rateText(r.refused, before?.refused, dt)),
      h("td", { class: "refused-total" }, r.refused.toLocaleString("en")));
  const rows = keys.flatMap((k) => {
    const old = prev.api_budgets?.find((b) => b.key === k.key);
    const own = k.total ? [row(k.key, `${k.requests_per_minute}/min`, k.total, old?.total ?? undefined)] : [];
    // A client not in the last reading started from nothing if its
    // bucket is younger than that reading; else its rate is not known yet.
    const zero: Reading = { used: 0, served: 0, refused: 0, age_ms: 0 };
    const before = (c: Reading & { client: string }) =>
      old?.clients.find((o) => o.client === c.client) ?? (c.age_ms <= dt * 1000 ? zero : undefined);
    const clients = k.clients.map((c) =>
      row(`${k.key} · ${c.client || "(no client id)"}`, `${k.client_requests_per_minute}/min each`, c, before(c)));
    const more = k.client_count > k.clients.length
      ? [h("tr", {}, h("td", { colspan: "6", class: "muted" }, `and ${k.client_count - k.clients.length} more clients of ${k.key}`))]
      : [];
    return [...own, ...clients, ...more];
  });
  return h("table", { id: "budgets" },
    h("thead", {}, h("tr", {}, ...["Key · client", "Budget", "Used now", "served/s", "refused/s", "refused since start"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, ...rows));
}

const COLORS = ["#2457c5", "#b3261e", "#1e7b34", "#8a5a00", "#6b3fa0", "#00707a"];

export async function healthPage(failure: (e: unknown) => HTMLElement): Promise<void> {
  const show = screen();
  leaveHealth();
  const heading = h("h1", {}, "Health");
  const status = h("div", { "aria-live": "polite" });
  const nav = h("nav", {}, h("a", { href: "#/stores" }, "Stores"));
  show(nav, heading, h("p", { class: "muted" }, "Loading…"));
  let previous: Stats;
  try {
    previous = (await call<Stats>("GET", "/v1/stats")).body;
  } catch (e) {
    show(nav, heading, failure(e));
    return;
  }
  const budgeted = previous.api_budgets ?? [];
  const charts = budgeted.length ? [...CHARTS, budgetChart(budgeted)] : CHARTS;
  const series: number[][][] = charts.map((c) => [[], ...c.labels.map(() => [])]);
  const readouts: HTMLElement[][] = [];
  const holders = charts.map((c, i) => {
    const out = c.labels.map((l, j) => h("output", { id: `rate-${i}-${j}`, "aria-label": l }, "0"));
    readouts.push(out);
    return h("section", { class: "chart", "aria-label": c.title },
      h("h2", {}, c.title),
      h("p", { class: "readout" }, ...c.labels.flatMap((l, j) => [`${l}: `, out[j] as HTMLElement, " "])),
      h("div", { class: "plot", id: `chart-${i}` }));
  });
  const routes = h("div", {}, h("p", { class: "muted" }, "Measuring…"));
  const budgets = h("div", {}, h("p", { class: "muted" }, "Measuring…"));
  show(nav, heading, h("p", { class: "muted" }, "The last two minutes, updated every second."), status, ...holders,
    h("section", { "aria-labelledby": "routes-heading" }, h("h2", { id: "routes-heading" }, "Busiest routes"), routes),
    h("section", { "aria-labelledby": "budgets-heading" }, h("h2", { id: "budgets-heading" }, "Request budgets"), budgets));
  const width = Math.max(280, Math.min(1100, (document.getElementById("main")?.clientWidth ?? 800) - 40));
  const plots = charts.map((c, i) => new uPlot({
    width,
    height: 180,
    series: [{}, ...c.labels.map((l, j) => ({ label: l, stroke: COLORS[j % COLORS.length], width: 2 }))],
    axes: [{}, { size: 60 }],
    legend: { show: false },
  }, series[i] as uPlot.AlignedData, document.getElementById(`chart-${i}`) as HTMLElement));
  const tick = async () => {
    try {
      const now = (await call<Stats>("GET", "/v1/stats")).body;
      const dt = Math.max((now.at_ms - previous.at_ms) / 1000, 0.001);
      charts.forEach((c, i) => {
        const data = series[i] as number[][];
        const values = c.values(previous, now, dt);
        (data[0] as number[]).push(now.at_ms / 1000);
        values.forEach((v, j) => {
          (data[j + 1] as number[]).push(v);
          (readouts[i]?.[j] as HTMLElement).textContent = fixed(v);
        });
        for (const s of data) if (s.length > POINTS) s.shift();
        plots[i]?.setData(data as uPlot.AlignedData);
      });
      routes.replaceChildren(routesTable(previous, now, dt));
      budgets.replaceChildren(budgetsTable(previous, now, dt));
      previous = now;
      status.replaceChildren();
    } catch (e) {
      status.replaceChildren(failure(e));
    }
  };
  // The user may have left while the first reading was on its way.
  if (show.current()) timer = window.setInterval(() => void tick(), 1000);
}
