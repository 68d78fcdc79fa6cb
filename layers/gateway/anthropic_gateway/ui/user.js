// One user's page: its budget and spend, its teams and keys, its settings (editable), block / unblock, delete.

import { api } from "./api.js";
import { badge, chips, confirmAction, count, h, message, usd, when } from "./dom.js";
import { settingsForm, USER_FIELDS } from "./form.js";
import { budgetCell } from "./keys.js";
import { limits, teamLink } from "./teams.js";

export async function userView(main, userId, flash) {
  main.replaceChildren(message("info", "Loading the user…"));
  const notices = h("div", { class: "stack" });
  const body = h("div", { class: "stack" });
  const back = h("a", { href: "#/users", class: "back" }, "← All users");

  const act = async (work) => {
    try {
      await work();
    } catch (error) {
      notices.replaceChildren(message("error", error.message));
    }
  };

  const show = async (notice) => {
    const info = await api("/user/info", { query: { user_id: userId } });
    const user = info.user_info;
    notices.replaceChildren(...(notice ? [message("success", notice)] : []));
    body.replaceChildren(header(user, actions(user)), usage(user), teamsPanel(info.teams), keysPanel(info), settings(user, show));
  };

  const actions = (user) => ({
    block: () => act(async () => {
      if (!user.blocked && !(await confirmAction("Block this user?", `Every key of ${user.user_id} stops until it is unblocked.`, "Block user"))) return;
      await api("/user/update", { method: "POST", body: { user_id: userId, blocked: !user.blocked } });
      await show(user.blocked ? "User unblocked." : "User blocked: its keys stop.");
    }),
    remove: () => act(async () => {
      const text = `${user.user_id}, its ${count(user.key_count)} keys and its memberships are deleted. This cannot be undone.`;
      if (!(await confirmAction("Delete this user?", text, "Delete user"))) return;
      const done = await api("/user/delete", { method: "POST", body: { user_ids: [userId] } });
      flash(`Deleted ${user.user_id} and ${count(done.deleted_keys)} keys.`);
      location.hash = "#/users";
    }),
  });

  try {
    await show();
  } catch (error) {
    main.replaceChildren(back, message("error", `Could not load this user: ${error.message}`));
    return;
  }
  main.replaceChildren(back, notices, body);
}

function header(user, actions) {
  return h("div", { class: "page-head" },
    h("div", {},
      h("h1", {}, user.user_alias ?? user.user_id, " ", badge(user.blocked ? "blocked" : "active")),
      h("p", { class: "muted" }, "User ID ", h("code", {}, user.user_id), user.user_email ? ` · ${user.user_email}` : "", ` · ${user.user_role}`)),
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "ghost", onclick: actions.block }, user.blocked ? "Unblock" : "Block"),
      h("button", { type: "button", class: "danger", onclick: actions.remove }, "Delete")));
}

function usage(user) {
  const stat = (label, value) => h("div", { class: "stat" }, h("span", { class: "label" }, label), h("strong", {}, value));
  return h("section", { class: "panel", "aria-label": "Usage" },
    h("h2", {}, "Budget and spend"),
    h("div", { class: "stats" },
      stat("Budget", budgetCell(user)),
      stat("Total spend", usd(user.total_spend)),
      stat("Reserved now", usd(user.reserved_spend)),
      stat("Limits (rpm / tpm / parallel)", limits(user)),
      stat("Models", chips(user.models, "all")),
      stat("Keys", count(user.key_count))));
}

function teamsPanel(teams) {
  const content = teams.length
    ? h("ul", { class: "plain" }, teams.map((team) => h("li", {}, h("a", { href: teamLink(team) }, team.team_alias ?? team.team_id))))
    : message("info", "In no team. Add the user from a team's page.");
  return h("section", { class: "panel", "aria-label": "User teams" }, h("h2", {}, "Teams"), content);
}

function keysPanel(info) {
  const content = info.keys.length
    ? h("div", { class: "table-wrap" }, h("table", { class: "user-keys" },
      h("thead", {}, h("tr", {}, ["Key", "Team", "Budget", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, info.keys.map((key) => h("tr", {},
        h("td", {}, h("a", { href: `#/keys/${key.token}` }, key.key_alias ?? key.key_name)),
        h("td", {}, key.team_id ?? h("span", { class: "muted" }, "—")),
        h("td", { class: "budget" }, budgetCell(key)),
        h("td", {}, when(key.created_at)))))))
    : message("info", "No keys.");
  return h("section", { class: "panel", "aria-label": "User keys" }, h("h2", {}, "Keys"), content);
}

function settings(user, show) {
  return h("section", { class: "panel", "aria-label": "Settings" },
    h("h2", {}, "Settings"),
    settingsForm({
      fields: USER_FIELDS,
      record: user,
      submitLabel: "Save changes",
      onSubmit: async (changes) => {
        if (!Object.keys(changes).length) return;
        await api("/user/update", { method: "POST", body: { user_id: user.user_id, ...changes } });
        await show(`Saved: ${Object.keys(changes).join(", ")}.`);
      },
    }));
}
