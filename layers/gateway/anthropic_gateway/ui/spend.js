// The spend page: spend, requests and tokens per day for a date range, per tag (/spend/tags, with the tagged
// requests' totals from /spend/tags/totals), per team (/spend/teams) and per user (/spend/users), each as a chart
// and a table; and the keys that spent the most from /spend/keys.

import { api } from "./api.js";
import { PALETTE, stackedBars } from "./chart.js";
import { count, h, message, usd } from "./dom.js";

const MAX_SERIES = 8;  // more rows than this: the rest are stacked together as "N other tags" (teams, users)
const TOKENS = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"];
const METRICS = {
  spend: { label: "Spend (USD)", daily: (d) => d.spend, format: (v) => usd(v) },
  requests: { label: "Requests", daily: (d) => d.log_count, format: (v) => count(Math.round(v)) },
  tokens: { label: "Tokens", daily: (d) => d.total_tokens, format: (v) => compact(v) },
};
// What "Requests" means everywhere on this page, as the gateway counts it for keys, tags, teams and users alike.
const REQUESTS_MEANING = "Requests are the requests an upstream (Anthropic or Bedrock) had, upstream errors "
  + "included; requests the gateway refused itself (an invalid key, a limit, a spent budget) are not counted, "
  + "here or on keys. Days are UTC.";

// One breakdown per kind: where its rows come from, how a row is named and linked, and what its total row is.
const KINDS = {
  tag: {
    path: "/spend/tags", plural: "tags", region: "Spend per tag",
    name: (row) => row.individual_request_tag, link: () => null,
    empty: "No tagged requests in this range. Tags come from litellm_metadata.tags, the x-litellm-tags header or the key's tags.",
    note: "A request with several tags is counted under each of them; the last row counts each tagged request once.",
    totalLabel: "All tagged requests",
    // The tag rows do not add up (a request is in each of its tags' rows): the API counts each request once.
    total: (range) => api("/spend/tags/totals", { query: range }),
  },
  team: {
    path: "/spend/teams", plural: "teams", region: "Spend per team",
    name: (row) => row.team_alias ?? row.team_id, link: (row) => `#/teams/${encodeURIComponent(row.team_id)}`,
    empty: "No requests with team keys in this range.",
    note: "The requests of the keys each team has.",
    totalLabel: "Total",
    total: null,  // a request has one team at most: the rows add up
  },
  user: {
    path: "/spend/users", plural: "users", region: "Spend per user",
    name: (row) => row.user_alias ?? row.user_email ?? row.user_id, link: (row) => `#/users/${encodeURIComponent(row.user_id)}`,
    empty: "No requests with user keys in this range.",
    note: "The requests of the keys each user has, in every team.",
    totalLabel: "Total",
    total: null,  // a request has one user at most: the rows add up
  },
};

export async function spendView(main, state) {
  const today = new Date().toISOString().slice(0, 10);
  state.end ??= today;
  state.start ??= shift(today, -29);
  state.metric ??= "spend";

  const start = h("input", { type: "date", name: "start_date", required: true, value: state.start });
  const end = h("input", { type: "date", name: "end_date", required: true, value: state.end });
  const metric = h("select", { name: "metric", "aria-label": "Metric" },
    Object.entries(METRICS).map(([value, m]) => h("option", { value, selected: value === state.metric }, m.label)));
  const presets = [7, 30, 90].map((days) => h("button", {
    type: "button", class: "ghost small",
    onclick: () => { end.value = today; start.value = shift(today, 1 - days); form.requestSubmit(); },
  }, `${days} days`));
  const form = h("form", { class: "toolbar-form", "aria-label": "Date range" },
    h("label", {}, "From ", start), h("label", {}, "To ", end), h("label", {}, "Show ", metric),
    h("button", { type: "submit", class: "primary" }, "Apply"), presets);
  const sections = Object.entries(KINDS).map(([kind, config]) => breakdown(kind, config, state));
  const byKey = h("section", { class: "panel", "aria-label": "Top keys by spend" }, message("info", "Loading keys…"));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(state, { start: start.value, end: end.value, metric: metric.value });
    for (const section of sections) section.load();
  });
  metric.addEventListener("change", () => {
    state.metric = metric.value;
    for (const section of sections) section.draw();
  });

  main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Spend"), form),
    h("p", { class: "muted", id: "requests-meaning" }, REQUESTS_MEANING),
    ...sections.map((section) => section.element), byKey);
  await Promise.all([...sections.map((section) => section.load()), loadTopKeys(byKey)]);
}

/** A section for one kind: its element, `load` (the report for the range) and `draw` (for another metric). */
function breakdown(kind, config, state) {
  const element = h("section", { class: "panel", "aria-label": config.region }, message("info", "Loading spend…"));
  let loaded = null;
  const draw = () => { if (loaded) element.replaceChildren(...sectionContent(kind, config, loaded, state)); };
  const load = async () => {
    element.replaceChildren(message("info", "Loading spend…"));
    const range = { start_date: state.start, end_date: state.end };
    try {
      const [rows, total] = await Promise.all([api(config.path, { query: range }), config.total?.(range)]);
      loaded = { rows, total: total ?? sumRows(rows) };
      draw();
    } catch (error) {
      loaded = null;
      element.replaceChildren(message("error", `Could not load spend per ${kind}: ${error.message}`));
    }
  };
  return { element, load, draw };
}

function sectionContent(kind, config, { rows, total }, state) {
  const title = h("h2", {}, `Per ${kind}, ${state.start} to ${state.end} (UTC)`);
  if (!rows.length) return [title, message("info", config.empty)];
  const days = [];
  for (let day = state.start; day <= state.end; day = shift(day, 1)) days.push(day);
  const metric = METRICS[state.metric];
  const shown = rows.slice(0, MAX_SERIES);
  const rest = rows.slice(MAX_SERIES);
  const valuesOf = (group) => days.map((day) => group.reduce(
    (sum, row) => sum + row.daily.filter((d) => d.date === day).reduce((s, d) => s + metric.daily(d), 0), 0));
  const series = shown.map((row, i) => ({ name: config.name(row), color: PALETTE[i], values: valuesOf([row]) }));
  if (rest.length) series.push({ name: `${rest.length} other ${config.plural}`, color: PALETTE[MAX_SERIES], values: valuesOf(rest) });
  const legend = h("ul", { class: "legend" }, series.map((s) => {
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = s.color;
    return h("li", {}, swatch, s.name);
  }));
  return [
    title,
    stackedBars({ days, series, format: metric.format, label: `${metric.label} per day and ${kind}` }),
    legend,
    h("p", { class: "hint" }, config.note),
    spendTable(kind, config, rows, total, series),
  ];
}

function spendTable(kind, config, rows, total, series) {
  const colors = new Map(series.map((s, i) => [i, s.color]));
  const cells = (row) => [
    h("td", { class: "num" }, count(row.log_count)),
    h("td", { class: "num" }, usd(row.total_spend)),
    TOKENS.map((name) => h("td", { class: "num" }, count(row[name]))),
    h("td", { class: "num" }, count(row.total_tokens)),
  ];
  const heading = kind[0].toUpperCase() + kind.slice(1);
  return h("div", { class: "table-wrap" }, h("table", { class: `spend spend-${kind}` },
    h("thead", {}, h("tr", {}, [heading, "Requests", "Spend", "Input", "Output", "Cache write", "Cache read", "Total tokens"]
      .map((title, i) => h("th", { scope: "col", class: i ? "num" : "" }, title)))),
    h("tbody", {}, rows.map((row, i) => {
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = colors.get(i) ?? PALETTE[MAX_SERIES];
      const name = config.name(row);
      const href = config.link(row);
      const id = kind === "tag" ? row.individual_request_tag : row[`${kind}_id`];
      return h("tr", { [`data-${kind}`]: id }, h("td", {}, swatch, href ? h("a", { href }, name) : name), cells(row));
    })),
    h("tfoot", {}, h("tr", { class: "total" }, h("th", { scope: "row" }, config.totalLabel), cells(total)))));
}

function sumRows(rows) {
  const sum = (name) => rows.reduce((total, row) => total + Number(row[name]), 0);
  return Object.fromEntries(["log_count", "total_spend", ...TOKENS, "total_tokens"].map((name) => [name, sum(name)]));
}

async function loadTopKeys(section) {
  const title = h("h2", {}, "Top keys by spend");
  const note = h("p", { class: "hint" }, "All time, and in each key's current budget period (keys keep running totals, not a history).");
  try {
    const top = await api("/spend/keys", { query: { limit: 10 } });
    if (!top.length) {
      section.replaceChildren(title, message("info", "No keys yet."));
      return;
    }
    section.replaceChildren(title, note, h("div", { class: "table-wrap" }, h("table", { class: "top-keys" },
      h("thead", {}, h("tr", {}, ["Alias", "Key", "Total spend", "Current period", "Requests", "Tokens"]
        .map((t, i) => h("th", { scope: "col", class: i > 1 ? "num" : "" }, t)))),
      h("tbody", {}, top.map((key) => h("tr", {},
        h("td", {}, h("a", { href: `#/keys/${key.token}` }, key.key_alias ?? "(no alias)")),
        h("td", {}, h("code", {}, key.key_name)),
        h("td", { class: "num" }, usd(key.total_spend)),
        h("td", { class: "num" }, usd(key.spend)),
        h("td", { class: "num" }, count(key.requests)),
        h("td", { class: "num" }, count(key.total_tokens))))))));
  } catch (error) {
    section.replaceChildren(title, message("error", `Could not load the top keys: ${error.message}`));
  }
}

function shift(isoDay, days) {
  const date = new Date(`${isoDay}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + days);
  return date.toISOString().slice(0, 10);
}

function compact(value) {
  return Number(value).toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 1 });
}
