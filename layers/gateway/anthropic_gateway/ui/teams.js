// The teams page: every team with its status, budget bar, members and keys (/team/list); and creating a team.

import { api } from "./api.js";
import { badge, chips, count, h, message, when } from "./dom.js";
import { settingsForm, TEAM_FIELDS } from "./form.js";
import { budgetCell } from "./keys.js";

export async function teamsView(main) {
  const createButton = h("button", { type: "button", class: "primary" }, "Create team");
  const top = h("div", { class: "stack" });
  const listing = h("section", { class: "panel flush", "aria-label": "Teams" }, message("info", "Loading teams…"));

  const load = async () => {
    try {
      listing.replaceChildren(teamTable(await api("/team/list")));
    } catch (error) {
      listing.replaceChildren(message("error", `Could not list the teams: ${error.message}`));
    }
  };

  createButton.addEventListener("click", () => {
    createButton.disabled = true;
    const close = () => { panel.remove(); createButton.disabled = false; };
    const form = settingsForm({
      fields: TEAM_FIELDS,
      submitLabel: "Create team",
      onCancel: close,
      onSubmit: async (body) => {
        const team = await api("/team/new", { method: "POST", body });
        close();
        top.replaceChildren(message("success", `Created team ${team.team_alias ?? team.team_id}.`));
        await load();
      },
    });
    const panel = h("section", { class: "panel", "aria-label": "Create a team" }, h("h2", {}, "Create a team"), form);
    top.replaceChildren(panel);
    form.querySelector("input").focus();
  });

  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Teams"), h("div", { class: "toolbar" }, createButton)),
    top,
    listing,
  );
  await load();
}

export const teamLink = (team) => `#/teams/${encodeURIComponent(team.team_id)}`;

function teamTable(teams) {
  if (!teams.length) return message("info", "No teams yet. A team shares one budget and limits across its keys.");
  const head = ["Team", "Status", "Members", "Keys", "Budget", "Limits (rpm / tpm / parallel)", "Models", "Tags", "Created"];
  return h("div", { class: "table-wrap" }, h("table", { class: "teams" },
    h("thead", {}, h("tr", {}, head.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, teams.map((team) => h("tr", { "data-team": team.team_id },
      h("td", {}, h("a", { href: teamLink(team) }, team.team_alias ?? team.team_id),
        team.team_alias ? h("div", { class: "hint" }, team.team_id) : null),
      h("td", {}, badge(team.blocked ? "blocked" : "active")),
      h("td", { class: "num" }, count(team.members_with_roles.length)),
      h("td", { class: "num" }, count(team.key_count)),
      h("td", { class: "budget" }, budgetCell(team)),
      h("td", { class: "num" }, limits(team)),
      h("td", {}, chips(team.models, "all")),
      h("td", {}, chips(team.tags)),
      h("td", {}, when(team.created_at)),
    )))));
}

export function limits(scope) {
  return [scope.rpm_limit, scope.tpm_limit, scope.max_parallel_requests]
    .map((value) => (value === null || value === undefined ? "–" : count(value))).join(" / ");
}
