// Building the page: elements from tags, attributes and children, with text
// always set as text (nothing from the server is ever parsed as HTML).

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | boolean | ((e: Event) => void) | undefined>;

export function h(tag: string, attrs: Attrs = {}, ...children: Child[]): HTMLElement {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") {
      el.addEventListener(name.replace(/^on/, ""), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, value);
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}

/** Counts navigations: a page's answer that arrives after the user moved on must not paint over the newer page. */
let navigation = 0;

/** Called by the router on every navigation. */
export function navigated(): void {
  navigation += 1;
}

/**
 * What a page draws with: replaces what `main` shows and moves the focus to
 * its heading (for keyboard and screen-reader users), but only while the
 * navigation that opened the page is still the current one.
 */
export type Screen = ((...children: Child[]) => void) & {
  /** Whether the user is still on the page this screen belongs to. */
  current: () => boolean;
};

export function screen(): Screen {
  const mine = navigation;
  const draw = (...children: Child[]) => {
    if (mine !== navigation) return;
    const main = document.getElementById("main");
    if (!main) return;
    // A page drawn again (its data arrived) keeps the focus where the user
    // put it, in an input the new drawing reuses: typing into a search box
    // must not land on the heading halfway through.
    const active = document.activeElement;
    const typing = active instanceof HTMLElement && active !== main && main.contains(active);
    main.replaceChildren();
    for (const c of children) {
      if (c) main.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    if (typing && main.contains(active)) {
      active.focus();
      return;
    }
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    }
  };
  return Object.assign(draw, { current: () => mine === navigation });
}

/** A message in the page's alert region. */
export function alertBox(message: string, kind: "error" | "ok" = "error"): HTMLElement {
  return h("p", { class: `alert ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1024 * 1024)).toFixed(2)} MiB`;
}

export function when(ms: number): string {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}
