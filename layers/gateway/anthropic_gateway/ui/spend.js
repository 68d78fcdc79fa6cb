// The spend page: spend, requests and tokens per tag per day from /spend/tags (chart and table) for a date
// range, and the keys that spent the most from /spend/keys.

import { api } from "./api.js";
import { PALETTE, stackedBars } from "./chart.js";
import { count, h, message, usd } from "./dom.js";

const MAX_SERIES = 8;  // more tags than this: the rest are stacked together as "other tags"
const TOKENS = ["input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"];
const METRICS = {
  spend: { label: "Spend (USD)", daily: (d) => d.spend, format: (v) => usd(v) },
  requests: { label: "Requests", daily: (d) => d.log_count, format: (v) => count(Math.round(v)) },
  tokens: { label: "Tokens", daily: (d) => d.total_tokens, format: (v) => compact(v) },
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
  const byTag = h("section", { class: "panel", "aria-label": "Spend per tag" }, message("info", "Loading spend…"));
  const byKey = h("section", { class: "panel", "aria-label": "Top keys by spend" }, message("info", "Loading keys…"));

  let report = null;
  const draw = () => byTag.replaceChildren(...tagSection(report, state));
  const load = async () => {
    byTag.replaceChildren(message("info", "Loading spend…"));
    try {
      report = await api("/spend/tags", { query: { start_date: state.start, end_date: state.end } });
      draw();
    } catch (error) {
      byTag.replaceChildren(message("error", `Could not load spend per tag: ${error.message}`));
    }
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    Object.assign(state, { start: start.value, end: end.value, metric: metric.value });
    load();
  });
  metric.addEventListener("change", () => {
    state.metric = metric.value;
    if (report) draw();
  });

  main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Spend"), form), byTag, byKey);
  await Promise.all([load(), loadTopKeys(byKey)]);
}

function tagSection(report, state) {
  const title = h("h2", {}, `Per tag, ${state.start} to ${state.end} (UTC)`);
  if (!report.length) {
    return [title, message("info", "No tagged requests in this range. Tags come from litellm_metadata.tags, the x-litellm-tags header or the key's tags.")];
  }
  const days = [];
  for (let day = state.start; day <= state.end; day = shift(day, 1)) days.push(day);
  const metric = METRICS[state.metric];
  const shown = report.slice(0, MAX_SERIES);
  const rest = report.slice(MAX_SERIES);
  const valuesOf = (rows) => days.map((day) => rows.reduce(
    (sum, row) => sum + row.daily.filter((d) => d.date === day).reduce((s, d) => s + metric.daily(d), 0), 0));
  const series = shown.map((row, i) => ({ name: row.individual_request_tag, color: PALETTE[i], values: valuesOf([row]) }));
  if (rest.length) series.push({ name: `${rest.length} other tags`, color: PALETTE[MAX_SERIES], values: valuesOf(rest) });
  const legend = h("ul", { class: "legend" }, series.map((s) => {
    const swatch = h("span", { class: "swatch" });
    swatch.style.background = s.color;
    return h("li", {}, swatch, s.name);
  }));
  return [title, stackedBars({ days, series, format: metric.format, label: `${metric.label} per day and tag` }), legend, tagTable(report, series)];
}

function tagTable(report, series) {
  const colors = Object.fromEntries(series.map((s) => [s.name, s.color]));
  const total = (name) => report.reduce((sum, row) => sum + row[name], 0);
  const cells = (row) => [
    h("td", { class: "num" }, count(row.log_count)),
    h("td", { class: "num" }, usd(row.total_spend)),
    TOKENS.map((name) => h("td", { class: "num" }, count(row[name]))),
    h("td", { class: "num" }, count(row.total_tokens)),
  ];
  return h("div", { class: "table-wrap" }, h("table", { class: "spend" },
    h("thead", {}, h("tr", {}, ["Tag", "Requests", "Spend", "Input", "Output", "Cache write", "Cache read", "Total tokens"]
      .map((title, i) => h("th", { scope: "col", class: i ? "num" : "" }, title)))),
    h("tbody", {}, report.map((row) => {
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = colors[row.individual_request_tag] ?? PALETTE[MAX_SERIES];
      return h("tr", { "data-tag": row.individual_request_tag }, h("td", {}, swatch, row.individual_request_tag), cells(row));
    })),
    h("tfoot", {}, h("tr", {}, h("th", { scope: "row" }, "Total"), cells({
      log_count: total("log_count"), total_spend: total("total_spend"), total_tokens: total("total_tokens"),
      ...Object.fromEntries(TOKENS.map((name) => [name, total(name)])),
    })))));
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
