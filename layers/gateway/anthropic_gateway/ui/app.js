// The console's entry point: sign-in (master key or SSO), the hash routes (#/keys, #/keys/<hash>, #/teams,
// #/teams/<id>, #/users, #/users/<id>, #/tags, #/spend, #/audit, #/sign-in/<why SSO failed>) and sign-out. The
// master key is in sessionStorage only; routes and links carry key hashes and team or user ids at most
// (percent-encoded), never a key.

import { api, session } from "./api.js";
import { auditView } from "./audit.js";
import { h, message } from "./dom.js";
import { keyView } from "./key.js";
import { keysView } from "./keys.js";
import * as sso from "./sso.js";
import { spendView } from "./spend.js";
import { tagsView } from "./tags.js";
import { teamView } from "./team.js";
import { teamsView } from "./teams.js";
import { userView } from "./user.js";
import { usersView } from "./users.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
const who = document.getElementById("who");
const state = { keys: {}, spend: {}, users: {}, audit: {} };  // filters and pages, kept while the tab is open
let flashed = null;

const flash = (text) => { flashed = text; };

async function route() {
  const signedIn = session.signedIn();
  nav.hidden = signOutButton.hidden = !signedIn;
  who.textContent = sso.whoText();
  const [, view = "keys", encoded] = location.hash.split("/");
  if (view === "sign-in") {  // back from a single sign-on that failed
    history.replaceState(null, "", location.pathname);
    signIn(sso.failure(encoded));
    return;
  }
  if (!signedIn) {
    signIn();
    return;
  }
  const token = encoded === undefined ? undefined : decoded(encoded);
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.dataset.view === view);
  const notice = flashed ? message("success", flashed) : null;
  flashed = null;
  try {
    if (view === "spend") await spendView(main, state.spend);
    else if (view === "keys" && token) await keyView(main, token, flash);
    else if (view === "teams") await (token ? teamView(main, token, flash) : teamsView(main));
    else if (view === "users") await (token ? userView(main, token, flash) : usersView(main, state.users));
    else if (view === "tags") await tagsView(main);
    else if (view === "audit") await auditView(main, state.audit);
    else await keysView(main, state.keys);
    if (notice) main.prepend(notice);
  } catch (error) {
    if (error.status === 401) {  // the master key changed (rotated) since sign-in, or the SSO session ended
      const text = session.sso ? "Your session has ended: sign in again."
        : "The gateway no longer accepts this key: sign in again.";
      session.signOut();
      signIn(text);
    } else {
      main.replaceChildren(message("error", `Something went wrong: ${error.message}`));
    }
  }
}

function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;  // not percent-encoding we wrote: looked up as it is (and not found)
  }
}

function signIn(notice) {
  nav.hidden = signOutButton.hidden = true;
  who.textContent = "";
  const input = h("input", {
    type: "password", name: "master-key", id: "master-key", autocomplete: "off", required: true,
    placeholder: "sk-...", spellcheck: "false",
  });
  const problem = h("div", { class: "form-message" }, notice ? message("error", notice) : null);
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "panel sign-in", "aria-label": "Sign in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Sign in with the gateway's master key, or with a key of your own whose user has a "
      + "role on the admin API (it then shows what that role may see and do). The key is kept in this tab only, and "
      + "forgotten when the tab closes."),
    h("label", { class: "field", for: "master-key" }, h("span", { class: "label" }, "Master key or your own key"), input),
    problem,
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    submit.disabled = true;
    problem.replaceChildren();
    try {
      await api("/key/list", { query: { size: 1 }, key });  // any admin call: says whether the key may use the console
      session.signIn(key);
      if (!location.hash || location.hash === "#/") location.hash = "#/keys";
      await route();
    } catch (error) {
      const text = error.status === 401 ? "Wrong key: the gateway did not accept it."
        : error.status === 403 ? `That key has no role on the admin API: ${error.message}`
          : `Could not sign in: ${error.message}`;
      problem.replaceChildren(message("error", text));
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  main.replaceChildren(form);
  input.focus();
  sso.signInButton().then((button) => {
    if (button) form.querySelector("h1").after(button, h("p", { class: "muted" }, "or with the master key or a key of your own:"));
  });
}

signOutButton.addEventListener("click", async () => {
  if (session.sso) await sso.signOut().catch(() => {});  // the cookie goes; signed out here either way
  session.signOut();
  state.keys = {};
  state.spend = {};
  state.users = {};
  state.audit = {};
  history.replaceState(null, "", location.pathname);
  signIn();
});
window.addEventListener("hashchange", route);
if (!session.key()) await sso.restoreSession();  // a session cookie from an SSO sign-in, if any
route();
