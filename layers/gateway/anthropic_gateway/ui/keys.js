// The keys page: every key in a table, paged through /key/list, filterable by alias; and creating a key.

import { api } from "./api.js";
import { badge, budgetBar, chips, count, h, message, status, usd, when } from "./dom.js";
import { keyForm } from "./key_form.js";
import { newKeyPanel } from "./new_key.js";

const PAGE_SIZE = 20;

export async function keysView(main, state) {
  const filter = h("input", { type: "search", name: "alias", placeholder: "Exact alias", "aria-label": "Filter by alias" });
  filter.value = state.alias ?? "";
  const createButton = h("button", { type: "button", class: "primary" }, "Create key");
  const top = h("div", { class: "stack" });
  const listing = h("section", { class: "panel flush" }, message("info", "Loading keys…"));

  const load = async () => {
    try {
      const page = await api("/key/list", {
        query: { page: state.page ?? 1, size: PAGE_SIZE, key_alias: state.alias || null, return_full_object: true },
      });
      listing.replaceChildren(keyTable(page.keys), pager(page, state, load));
    } catch (error) {
      listing.replaceChildren(message("error", `Could not list the keys: ${error.message}`));
    }
  };

  const filterForm = h("form", { class: "toolbar-form", role: "search" }, filter,
    h("button", { type: "submit", class: "ghost" }, "Filter"),
    h("button", { type: "button", class: "ghost", onclick: () => { filter.value = ""; filterForm.requestSubmit(); } }, "Clear"));
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.alias = filter.value.trim();
    state.page = 1;
    load();
  });

  createButton.addEventListener("click", () => {
    createButton.disabled = true;
    const form = keyForm({
      submitLabel: "Create key",
      onCancel: () => { panel.remove(); createButton.disabled = false; },
      onSubmit: async (body) => {
        const created = await api("/key/generate", { method: "POST", body });
        panel.remove();
        createButton.disabled = false;
        top.replaceChildren(newKeyPanel(created.key, { title: `New key ${created.key_alias ?? created.key_name}` }));
        await load();
      },
    });
    const panel = h("section", { class: "panel", "aria-label": "Create a key" }, h("h2", {}, "Create a key"), form);
    top.replaceChildren(panel);
    form.querySelector("input").focus();
  });

  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Keys"), h("div", { class: "toolbar" }, filterForm, createButton)),
    top,
    listing,
  );
  await load();
}

function keyTable(keys) {
  if (!keys.length) return message("info", "No keys here yet. Create one to hand out instead of the Anthropic key.");
  const head = ["Alias", "Key", "Status", "Models", "Budget", "Limits (rpm / tpm / parallel)", "Tags", "Created", "Expires"];
  return h("div", { class: "table-wrap" }, h("table", { class: "keys" },
    h("thead", {}, h("tr", {}, head.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, keys.map((key) => h("tr", { "data-token": key.token },
      h("td", {}, h("a", { href: `#/keys/${key.token}`, class: key.key_alias ? "" : "muted" }, key.key_alias ?? "(no alias)")),
      h("td", {}, h("code", {}, key.key_name)),
      h("td", {}, badge(status(key))),
      h("td", {}, chips(key.models, "all")),
      h("td", { class: "budget" }, budgetCell(key)),
      h("td", { class: "num" }, [key.rpm_limit, key.tpm_limit, key.max_parallel_requests].map(limit).join(" / ")),
      h("td", {}, chips(key.tags)),
      h("td", {}, when(key.created_at)),
      h("td", {}, when(key.expires)),
    )))));
}

export function budgetCell(key) {
  if (key.max_budget === null || key.max_budget === undefined) {
    return h("div", {}, usd(key.spend), h("span", { class: "muted" }, " · no budget"));
  }
  return h("div", {},
    h("div", { class: "budget-line" }, `${usd(key.spend)} / ${usd(key.max_budget)}`),
    budgetBar(key.spend, key.max_budget),
    key.budget_reset_at ? h("div", { class: "hint" }, "resets ", when(key.budget_reset_at)) : null);
}

function limit(value) {
  return value === null || value === undefined ? "–" : count(value);
}

function pager(page, state, load) {
  const current = page.current_page;
  const pages = Math.max(page.total_pages, 1);
  const go = (to) => { state.page = to; load(); };
  return h("div", { class: "pager" },
    h("span", { class: "muted" }, `${count(page.total_count)} key${page.total_count === 1 ? "" : "s"} · page ${current} of ${pages}`),
    h("button", { type: "button", class: "ghost small", disabled: current <= 1, onclick: () => go(current - 1) }, "‹ Previous"),
    h("button", { type: "button", class: "ghost small", disabled: current >= pages, onclick: () => go(current + 1) }, "Next ›"));
}
