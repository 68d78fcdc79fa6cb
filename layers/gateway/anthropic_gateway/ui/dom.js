// Building the page: every value users typed (aliases, tags, metadata, models) goes in as text, never as HTML.

/** An element: h("td", { class: "num", onclick: fn }, "text", childNode, [more]). */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  element.append(...flatten(children));
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  setAttributes(element, attributes);
  element.append(...flatten(children));
  return element;
}

function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
}

// Strings and numbers become text nodes (append does that); nested arrays flatten; null/false vanish.
function flatten(children) {
  return children.flat(Infinity).filter((child) => child !== null && child !== undefined && child !== false)
    .map((child) => (child instanceof Node ? child : String(child)));
}

/** A message in the page (errors included): never a blank screen. */
export function message(kind, text) {
  return h("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

export function usd(value) {
  const amount = Number(value ?? 0);
  const digits = amount !== 0 && Math.abs(amount) < 1 ? 4 : 2;
  return amount.toLocaleString("en-US", {
    style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: digits,
  });
}

export function count(value) {
  return Number(value ?? 0).toLocaleString("en-US");
}

/** An ISO time as "YYYY-MM-DD HH:MM" UTC, with the full value as a tooltip. */
export function when(iso, withTime = false) {
  if (!iso) return h("span", { class: "muted" }, "never");
  const date = new Date(iso);
  const shown = Number.isNaN(date.getTime()) ? iso : date.toISOString().slice(0, withTime ? 16 : 10).replace("T", " ");
  return h("time", { datetime: iso, title: iso }, shown);
}

/** "active", "blocked" or "expired", as the gateway decides it on a request. */
export function status(key) {
  if (key.blocked) return "blocked";
  if (key.expires && new Date(key.expires) <= new Date()) return "expired";
  return "active";
}

export function badge(state) {
  return h("span", { class: `badge ${state}` }, state);
}

/** Spent / max as a bar; the bar's width is set through the CSSOM, which the CSP allows (no style attribute). */
export function budgetBar(spent, max) {
  const bar = h("span", { class: "fill" });
  const share = max > 0 ? Math.min(1, spent / max) : spent > 0 ? 1 : 0;
  bar.style.width = `${(share * 100).toFixed(1)}%`;
  if (share >= 1) bar.classList.add("full");
  else if (share >= 0.8) bar.classList.add("high");
  return h("span", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": max, "aria-valuenow": spent }, bar);
}

export function chips(values, empty = "—") {
  if (!values?.length) return h("span", { class: "muted" }, empty);
  return h("span", { class: "chips" }, values.map((value) => h("span", { class: "chip" }, value)));
}

/** Ask before a destructive action, in the page's own modal (never window.confirm). */
export function confirmAction(title, text, confirmLabel) {
  const dialog = document.getElementById("confirm");
  dialog.querySelector("#confirm-title").textContent = title;
  dialog.querySelector("#confirm-text").textContent = text;
  dialog.querySelector("#confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}
