// One team's page: its budget and spend, its members with their own budgets (add, change, remove), its keys,
// its settings (editable), block / unblock and delete (with its keys).

import { api } from "./api.js";
import { badge, confirmAction, count, h, message, usd, when } from "./dom.js";
import { settingsForm, TEAM_FIELDS } from "./form.js";
import { budgetCell } from "./keys.js";
import { limits } from "./teams.js";

export async function teamView(main, teamId, flash) {
  main.replaceChildren(message("info", "Loading the team…"));
  const notices = h("div", { class: "stack" });
  const body = h("div", { class: "stack" });
  const back = h("a", { href: "#/teams", class: "back" }, "← All teams");

  const act = async (work) => {
    try {
      await work();
    } catch (error) {
      notices.replaceChildren(message("error", error.message));
    }
  };

  const show = async (notice) => {
    const info = await api("/team/info", { query: { team_id: teamId } });
    notices.replaceChildren(...(notice ? [message("success", notice)] : []));
    body.replaceChildren(
      header(info.team_info, actions(info.team_info)),
      usage(info.team_info),
      membersPanel(info, act, show),
      keysPanel(info),
      settings(info.team_info, show),
    );
  };

  const actions = (team) => ({
    block: () => act(async () => {
      if (!team.blocked && !(await confirmAction("Block this team?", `Every key of ${name(team)} stops until it is unblocked.`, "Block team"))) return;
      await api(team.blocked ? "/team/unblock" : "/team/block", { method: "POST", body: { team_id: teamId } });
      await show(team.blocked ? "Team unblocked." : "Team blocked: its keys stop.");
    }),
    remove: () => act(async () => {
      const text = `${name(team)}, its ${count(team.key_count)} keys and its memberships are deleted. This cannot be undone.`;
      if (!(await confirmAction("Delete this team?", text, "Delete team"))) return;
      const done = await api("/team/delete", { method: "POST", body: { team_ids: [teamId] } });
      flash(`Deleted ${name(team)} and ${count(done.deleted_keys)} keys.`);
      location.hash = "#/teams";
    }),
  });

  try {
    await show();
  } catch (error) {
    main.replaceChildren(back, message("error", `Could not load this team: ${error.message}`));
    return;
  }
  main.replaceChildren(back, notices, body);
}

function name(team) {
  return team.team_alias ? `“${team.team_alias}”` : team.team_id;
}

function header(team, actions) {
  return h("div", { class: "page-head" },
    h("div", {},
      h("h1", {}, team.team_alias ?? team.team_id, " ", badge(team.blocked ? "blocked" : "active")),
      h("p", { class: "muted" }, "Team ID ", h("code", {}, team.team_id))),
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "ghost", onclick: actions.block }, team.blocked ? "Unblock" : "Block"),
      h("button", { type: "button", class: "danger", onclick: actions.remove }, "Delete")));
}

function usage(team) {
  const stat = (label, value, extra) => h("div", { class: "stat" }, h("span", { class: "label" }, label), h("strong", {}, value), extra ?? null);
  return h("section", { class: "panel", "aria-label": "Usage" },
    h("h2", {}, "Budget and spend"),
    h("div", { class: "stats" },
      stat("Budget", budgetCell(team)),
      stat("Total spend", usd(team.total_spend)),
      stat("Reserved now", usd(team.reserved_spend), h("span", { class: "hint" }, "estimates of requests in flight")),
      stat("Limits (rpm / tpm / parallel)", limits(team)),
      stat("Keys", count(team.key_count)),
      stat("Created", when(team.created_at, true))));
}

function membersPanel(info, act, show) {
  const teamId = info.team_id;
  const memberships = info.team_memberships;
  const rows = memberships.map((member) => {
    const role = h("select", { name: "role", "aria-label": `Role of ${member.user_id}` },
      ["user", "admin"].map((value) => h("option", { value, selected: value === member.role }, value)));
    const budget = h("input", { type: "number", min: 0, step: "any", name: "max_budget_in_team",
      "aria-label": `Budget in team of ${member.user_id}`, placeholder: "none" });
    budget.value = member.max_budget_in_team ?? "";
    const save = () => act(async () => {
      const text = budget.value.trim();
      const amount = text === "" ? null : Number(text);
      if (amount !== null && (!Number.isFinite(amount) || amount < 0)) throw new Error("Budget in team: expected a number ≥ 0.");
      await api("/team/member_update", { method: "POST", body: { team_id: teamId, user_id: member.user_id, role: role.value, max_budget_in_team: amount } });
      await show(`Saved ${member.user_id}.`);
    });
    const remove = () => act(async () => {
      if (!(await confirmAction("Remove this member?", `${member.user_id} leaves the team, and its keys in the team are deleted.`, "Remove member"))) return;
      const done = await api("/team/member_delete", { method: "POST", body: { team_id: teamId, user_id: member.user_id } });
      await show(`Removed ${member.user_id} and ${count(done.deleted_keys)} of its keys.`);
    });
    return h("tr", { "data-user": member.user_id },
      h("td", {}, h("a", { href: `#/users/${encodeURIComponent(member.user_id)}` }, member.user_id)),
      h("td", {}, role),
      h("td", { class: "budget" }, budgetCell({ ...member, max_budget: member.max_budget_in_team })),
      h("td", {}, budget),
      h("td", {}, h("div", { class: "toolbar" },
        h("button", { type: "button", class: "ghost small", onclick: save }, "Save"),
        h("button", { type: "button", class: "ghost small", onclick: remove }, "Remove"))));
  });
  const table = memberships.length
    ? h("div", { class: "table-wrap" }, h("table", { class: "members" },
      h("thead", {}, h("tr", {}, ["User", "Role", "Spend in team", "Budget in team (USD)", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)))
    : message("info", "No members yet.");
  return h("section", { class: "panel", "aria-label": "Members" }, h("h2", {}, "Members"), table, addMember(teamId, act, show));
}

function addMember(teamId, act, show) {
  const who = h("input", { type: "text", name: "member", placeholder: "user id or email", autocomplete: "off", spellcheck: "false" });
  const role = h("select", { name: "role" }, ["user", "admin"].map((value) => h("option", { value }, value)));
  const budget = h("input", { type: "number", min: 0, step: "any", name: "max_budget_in_team", placeholder: "none" });
  const form = h("form", { class: "toolbar-form add-member", "aria-label": "Add a member" },
    h("label", {}, "User ", who), h("label", {}, "Role ", role), h("label", {}, "Budget in team ", budget),
    h("button", { type: "submit", class: "primary" }, "Add member"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = who.value.trim();
    if (!text) return;
    act(async () => {
      // An email names (or creates) the user by email; anything else is a user id.
      const member = { [text.includes("@") && !text.startsWith("@") ? "user_email" : "user_id"]: text, role: role.value };
      const body = { team_id: teamId, member };
      if (budget.value.trim() !== "") body.max_budget_in_team = Number(budget.value);
      await api("/team/member_add", { method: "POST", body });
      await show(`Added ${text}.`);
    });
  });
  return form;
}

function keysPanel(info) {
  const content = info.keys.length
    ? h("div", { class: "table-wrap" }, h("table", { class: "team-keys" },
      h("thead", {}, h("tr", {}, ["Key", "User", "Budget", "Created"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, info.keys.map((key) => h("tr", {},
        h("td", {}, h("a", { href: `#/keys/${key.token}` }, key.key_alias ?? key.key_name)),
        h("td", {}, key.user_id ?? h("span", { class: "muted" }, "—")),
        h("td", { class: "budget" }, budgetCell(key)),
        h("td", {}, when(key.created_at)))))))
    : message("info", "No keys in this team yet: create one on the Keys page and pick this team.");
  const more = info.team_info.key_count > info.keys.length ? h("p", { class: "hint" }, `Showing ${info.keys.length} of ${count(info.team_info.key_count)} keys.`) : null;
  return h("section", { class: "panel", "aria-label": "Team keys" }, h("h2", {}, "Keys"), content, more);
}

function settings(team, show) {
  return h("section", { class: "panel", "aria-label": "Settings" },
    h("h2", {}, "Settings"),
    settingsForm({
      fields: TEAM_FIELDS,
      record: team,
      submitLabel: "Save changes",
      onSubmit: async (changes) => {
        if (!Object.keys(changes).length) return;
        await api("/team/update", { method: "POST", body: { team_id: team.team_id, ...changes } });
        await show(`Saved: ${Object.keys(changes).join(", ")}.`);
      },
    }));
}
