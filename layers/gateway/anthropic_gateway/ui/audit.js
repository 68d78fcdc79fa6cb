// The audit log page (#/audit): who changed what through the admin API, newest first (GET /audit), filtered by
// actor, target, action and date range, a page at a time ("Older entries" follows the API's cursor). Each entry
// shows the fields it changed, before and after; keys appear by their public hash only.

import { api } from "./api.js";
import { h, message, when } from "./dom.js";

const FILTERS = [
  ["actor", "Actor", "master, key:<alias>, sso:<subject>, idp:<subject> or a user id"],
  ["target", "Target", "key:<hash>, team:<id>, user:<id>, tag:<name>"],
  ["action", "Action", "key.update, or key for every key action"],
  ["start_date", "From", "YYYY-MM-DD"],
  ["end_date", "To", "YYYY-MM-DD"],
];

export async function auditView(main, state) {
  const inputs = Object.fromEntries(FILTERS.map(([name, , hint]) => [name, h("input", {
    name, id: `audit-${name}`, type: name.endsWith("_date") ? "date" : "text", placeholder: hint,
    value: state[name] ?? "", spellcheck: "false", autocomplete: "off",
  })]));
  const form = h("form", { class: "panel filters", "aria-label": "Filter the audit log" },
    h("div", { class: "filter-row" }, FILTERS.map(([name, label]) =>
      h("label", { class: "field", for: `audit-${name}` }, h("span", { class: "label" }, label), inputs[name]))),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Show")));
  const listing = h("section", { class: "panel flush", "aria-label": "Audit log" }, message("info", "Loading the audit log…"));
  const more = h("button", { type: "button", class: "ghost", hidden: true }, "Older entries");
  // What is shown: the filters it was read with and where its next page starts. A cursor belongs to the filters
  // that made it (the API refuses it with others), so "Older entries" pages with those, not with the form's.
  let shown = { query: null, cursor: null, rows: [] };
  let latest = 0;  // only the answer to the latest request is shown: an earlier one may arrive after it

  const load = async (query, cursor) => {
    const request = ++latest;
    try {
      const page = await api("/audit", { query: { ...query, page_size: 50, cursor: cursor ?? undefined } });
      if (request !== latest) return;
      const rows = cursor ? [...shown.rows, ...page.entries] : page.entries;
      shown = { query, cursor: page.cursor, rows };
      listing.replaceChildren(auditTable(rows));
      more.hidden = !page.cursor;
    } catch (error) {
      if (request !== latest) return;
      listing.replaceChildren(message("error", `Could not read the audit log: ${error.message}`));
      more.hidden = true;
    }
  };
  const filtered = () => Object.fromEntries(FILTERS.map(([name]) => [name, state[name]]));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const [name] of FILTERS) state[name] = inputs[name].value.trim();
    // The listing shown so far answers other filters: it goes, and its "Older entries" with it.
    listing.replaceChildren(message("info", "Loading the audit log…"));
    more.hidden = true;
    await load(filtered(), null);
  });
  more.addEventListener("click", () => load(shown.query, shown.cursor));

  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Audit log")),
    h("p", { class: "muted" }, "Every change made through the admin API: who, when, what, and the fields before and after."),
    form,
    listing,
    h("div", { class: "actions" }, more),
  );
  await load(filtered(), null);
}

function auditTable(entries) {
  if (!entries.length) return message("info", "No entries match.");
  const head = ["When", "Actor", "Action", "Target", "Before", "After"];
  return h("div", { class: "table-wrap" }, h("table", { class: "audit" },
    h("thead", {}, h("tr", {}, head.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, entries.map((entry) => h("tr", { "data-entry": entry.id },
      h("td", { title: entry.at }, when(entry.at, true)),
      h("td", {}, h("code", {}, entry.actor), entry.actor_user_id ? h("div", { class: "muted" }, entry.actor_user_id) : null),
      h("td", {}, h("code", {}, entry.action)),
      h("td", {}, h("code", { class: "target" }, entry.target)),
      h("td", {}, fields(entry.before)),
      h("td", {}, fields(entry.after)),
    )))));
}

function fields(values) {
  if (values === null || values === undefined) return h("span", { class: "muted" }, "—");
  return h("dl", { class: "fields" }, Object.entries(values).flatMap(([name, value]) => [
    h("dt", {}, name),
    h("dd", {}, value === null ? "null" : typeof value === "object" ? JSON.stringify(value) : String(value)),
  ]));
}
