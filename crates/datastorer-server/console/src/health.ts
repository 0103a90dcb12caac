// Live health: the server's counters (`GET /v1/stats`) read every second
// and drawn as rates with uPlot (chosen for size and speed: ~50 kB, canvas,
// no dependencies), the last two minutes of each. The page stops polling
// when it is left.

import uPlot from "uplot";
import { call } from "./api";
import { h, show } from "./dom";

interface Stats {
  at_ms: number;
  routes: Record<string, { requests: number; errors: number }>;
  saves: number;
  save_us: number;
  lease_waits: number;
  queue: { emergency: number; normal: number; in_flight: number; retrying: number; writes: number; flushes: number };
  client_sessions: number;
  webhooks_delivered: number;
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

const COLORS = ["#2457c5", "#b3261e", "#1e7b34", "#8a5a00"];

export async function healthPage(failure: (e: unknown) => HTMLElement): Promise<void> {
  leaveHealth();
  const heading = h("h1", {}, "Health");
  const status = h("div", { "aria-live": "polite" });
  const series: number[][][] = CHARTS.map((c) => [[], ...c.labels.map(() => [])]);
  const readouts: HTMLElement[][] = [];
  const holders = CHARTS.map((c, i) => {
    const out = c.labels.map((l, j) => h("output", { id: `rate-${i}-${j}`, "aria-label": l }, "0"));
    readouts.push(out);
    return h("section", { class: "chart", "aria-label": c.title },
      h("h2", {}, c.title),
      h("p", { class: "readout" }, ...c.labels.flatMap((l, j) => [`${l}: `, out[j] as HTMLElement, " "])),
      h("div", { class: "plot", id: `chart-${i}` }));
  });
  show(h("nav", {}, h("a", { href: "#/stores" }, "Stores")), heading, h("p", { class: "muted" }, "The last two minutes, updated every second."), status, ...holders);
  const width = Math.max(280, Math.min(1100, (document.getElementById("main")?.clientWidth ?? 800) - 40));
  const plots = CHARTS.map((c, i) => new uPlot({
    width,
    height: 180,
    series: [{}, ...c.labels.map((l, j) => ({ label: l, stroke: COLORS[j % COLORS.length], width: 2 }))],
    axes: [{}, { size: 60 }],
    legend: { show: false },
  }, series[i] as uPlot.AlignedData, document.getElementById(`chart-${i}`) as HTMLElement));
  let previous: Stats | null = null;
  const tick = async () => {
    try {
      const now = (await call<Stats>("GET", "/v1/stats")).body;
      if (previous) {
        const dt = Math.max((now.at_ms - previous.at_ms) / 1000, 0.001);
        CHARTS.forEach((c, i) => {
          const data = series[i] as number[][];
          const values = c.values(previous as Stats, now, dt);
          (data[0] as number[]).push(now.at_ms / 1000);
          values.forEach((v, j) => {
            (data[j + 1] as number[]).push(v);
            (readouts[i]?.[j] as HTMLElement).textContent = v.toFixed(v >= 100 ? 0 : 1);
          });
          for (const s of data) if (s.length > POINTS) s.shift();
          plots[i]?.setData(data as uPlot.AlignedData);
        });
      }
      previous = now;
      status.replaceChildren();
    } catch (e) {
      status.replaceChildren(failure(e));
    }
  };
  await tick();
  timer = window.setInterval(() => void tick(), 1000);
}
