// Time to first paint of the console's pages, measured in a real headless
// Chromium by `datastorer-bench --only console` (which starts the server,
// fills the stores and reads what this prints). Each figure is taken in the
// page: from the navigation (a change of the URL's fragment, as a click on a
// link makes it) to the first animation frame after the page's content is
// in the document, so the browser has painted it.
//
// Environment: BASE_URL, API_KEY, CHROMIUM, REPEAT, and PAGES: a JSON list
// of {name, hash, selector, count, heading?}. Prints one JSON line per
// measurement: {"name": …, "ms": …}.

import { chromium } from "playwright-core";

const { BASE_URL, API_KEY, CHROMIUM } = process.env;
const REPEAT = Number(process.env.REPEAT ?? "5");
const PAGES = JSON.parse(process.env.PAGES ?? "[]");

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(120000);
  await page.goto(`${BASE_URL}/console`);
  await page.getByLabel("API key").fill(API_KEY);
  await page.keyboard.press("Enter");
  await page.locator("#stores").waitFor();
  const measure = (p) =>
    page.evaluate(
      ({ hash, selector, count, heading }) =>
        new Promise((resolve) => {
          const t0 = performance.now();
          location.hash = hash;
          const ready = () =>
            document.querySelectorAll(selector).length >= count &&
            (heading === undefined || document.querySelector("h1")?.textContent === heading);
          const poll = () => (ready() ? requestAnimationFrame(() => resolve(performance.now() - t0)) : requestAnimationFrame(poll));
          poll();
        }),
      p,
    );
  // One round unmeasured (the first load of each page warms caches), then
  // the pages in turn, so a slow moment of the machine hits them alike.
  for (const p of PAGES) await measure(p);
  for (let r = 0; r < REPEAT; r++) {
    for (const p of PAGES) {
      await page.evaluate(() => {
        location.hash = "#/signin";
      });
      await page.getByLabel("API key").waitFor();
      console.log(JSON.stringify({ name: p.name, ms: await measure(p) }));
    }
  }
} finally {
  await browser.close();
}
