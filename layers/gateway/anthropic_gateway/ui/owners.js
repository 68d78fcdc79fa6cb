// The key form's team and user pickers: teams from /team/list; users from /user/list, narrowed to the members of
// the chosen team (a key's user must be one). Until the lists arrive, or if they cannot, the current values stay.

import { api } from "./api.js";
import { h } from "./dom.js";

const MAX_USERS = 100;  // one page of /user/list; a user beyond it still shows when it is the key's or a member

export function ownerPickers(team, user) {
  const initial = { team: team.value, user: user.value };
  Promise.all([api("/team/list"), api("/user/list", { query: { page_size: MAX_USERS } })]).then(([teams, users]) => {
    const names = new Map(users.users.map((u) => [u.user_id, nameOf(u.user_id, u.user_alias ?? u.user_email)]));
    const members = new Map(teams.map((t) => [t.team_id, t.members_with_roles.map((m) => m.user_id)]));
    fill(team, teams.map((t) => [t.team_id, nameOf(t.team_id, t.team_alias)]), team.value || initial.team);
    const narrow = () => {
      const ids = team.value ? members.get(team.value) ?? [] : [...names.keys()];
      const current = ids.includes(user.value) || (!team.value && user.value) ? user.value : "";
      fill(user, ids.map((id) => [id, names.get(id) ?? id]), current);
    };
    team.addEventListener("change", narrow);
    narrow();
  }).catch(() => {});  // the pickers keep what they hold: the form still saves, and the API says what is wrong
}

function nameOf(id, name) {
  return name ? `${name} (${id})` : id;
}

function fill(select, options, current) {
  select.replaceChildren(h("option", { value: "" }, "(none)"), ...options.map(([value, text]) => h("option", { value }, text)));
  if (current && !options.some(([value]) => value === current)) select.append(h("option", { value: current }, current));
  select.value = current ?? "";
}
