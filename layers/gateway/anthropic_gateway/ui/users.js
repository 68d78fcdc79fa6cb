// The users page: users a page at a time (/user/list), filterable by email; and creating a user, with the key
// /user/new hands out shown once.

import { api } from "./api.js";
import { badge, chips, count, h, message, when } from "./dom.js";
import { settingsForm, USER_FIELDS } from "./form.js";
import { budgetCell } from "./keys.js";
import { newKeyPanel } from "./new_key.js";

const PAGE_SIZE = 20;

export async function usersView(main, state) {
  const filter = h("input", { type: "search", name: "email", placeholder: "Part of an email", "aria-label": "Filter by email" });
  filter.value = state.email ?? "";
  const createButton = h("button", { type: "button", class: "primary" }, "Create user");
  const top = h("div", { class: "stack" });
  const listing = h("section", { class: "panel flush", "aria-label": "Users" }, message("info", "Loading users…"));

  const load = async () => {
    try {
      const page = await api("/user/list", { query: { page: state.page ?? 1, page_size: PAGE_SIZE, user_email: state.email || null } });
      listing.replaceChildren(userTable(page.users), pager(page, state, load));
    } catch (error) {
      listing.replaceChildren(message("error", `Could not list the users: ${error.message}`));
    }
  };

  const filterForm = h("form", { class: "toolbar-form", role: "search" }, filter,
    h("button", { type: "submit", class: "ghost" }, "Filter"));
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.email = filter.value.trim();
    state.page = 1;
    load();
  });

  createButton.addEventListener("click", () => {
    createButton.disabled = true;
    const close = () => { panel.remove(); createButton.disabled = false; };
    const withKey = h("input", { type: "checkbox", name: "auto_create_key", checked: true });
    const form = settingsForm({
      fields: USER_FIELDS,
      submitLabel: "Create user",
      onCancel: close,
      extra: [h("label", { class: "field check" }, withKey, h("span", { class: "label" }, "Create a key for the user"))],
      onSubmit: async (body) => {
        const user = await api("/user/new", { method: "POST", body: { ...body, auto_create_key: withKey.checked } });
        close();
        const who = user.user_alias ?? user.user_email ?? user.user_id;
        top.replaceChildren(user.key ? newKeyPanel(user.key, { title: `Key of ${who}` }) : message("success", `Created user ${who}.`));
        await load();
      },
    });
    const panel = h("section", { class: "panel", "aria-label": "Create a user" }, h("h2", {}, "Create a user"), form);
    top.replaceChildren(panel);
    form.querySelector("input").focus();
  });

  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Users"), h("div", { class: "toolbar" }, filterForm, createButton)),
    top,
    listing,
  );
  await load();
}

function userTable(users) {
  if (!users.length) return message("info", "No users here. A user's budget and limits hold across all its keys.");
  const head = ["User", "Email", "Role", "Status", "Teams", "Budget", "Created"];
  return h("div", { class: "table-wrap" }, h("table", { class: "users" },
    h("thead", {}, h("tr", {}, head.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, users.map((user) => h("tr", { "data-user": user.user_id },
      h("td", {}, h("a", { href: `#/users/${encodeURIComponent(user.user_id)}` }, user.user_alias ?? user.user_id)),
      h("td", {}, user.user_email ?? h("span", { class: "muted" }, "—")),
      h("td", {}, user.user_role),
      h("td", {}, badge(user.blocked ? "blocked" : "active")),
      h("td", {}, chips(user.teams)),
      h("td", { class: "budget" }, budgetCell(user)),
      h("td", {}, when(user.created_at)),
    )))));
}

function pager(page, state, load) {
  const pages = Math.max(page.total_pages, 1);
  const go = (to) => { state.page = to; load(); };
  return h("div", { class: "pager" },
    h("span", { class: "muted" }, `${count(page.total)} user${page.total === 1 ? "" : "s"} · page ${page.page} of ${pages}`),
    h("button", { type: "button", class: "ghost small", disabled: page.page <= 1, onclick: () => go(page.page - 1) }, "‹ Previous"),
    h("button", { type: "button", class: "ghost small", disabled: page.page >= pages, onclick: () => go(page.page + 1) }, "Next ›"));
}
