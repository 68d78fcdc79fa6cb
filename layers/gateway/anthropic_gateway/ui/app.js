// The console's entry point: sign-in, the hash routes (#/keys, #/keys/<hash>, #/spend) and sign-out.
// The master key is in sessionStorage only; routes and links carry key hashes at most, never a key.

import { api, session } from "./api.js";
import { h, message } from "./dom.js";
import { keyView } from "./key.js";
import { keysView } from "./keys.js";
import { spendView } from "./spend.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const signOutButton = document.getElementById("sign-out");
const state = { keys: {}, spend: {} };  // filters and pages, kept while the tab is open
let flashed = null;

const flash = (text) => { flashed = text; };

async function route() {
  const signedIn = Boolean(session.key());
  nav.hidden = signOutButton.hidden = !signedIn;
  if (!signedIn) {
    signIn();
    return;
  }
  const [, view = "keys", token] = location.hash.split("/");
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.dataset.view === view);
  const notice = flashed ? message("success", flashed) : null;
  flashed = null;
  try {
    if (view === "spend") await spendView(main, state.spend);
    else if (view === "keys" && token) await keyView(main, token, flash);
    else await keysView(main, state.keys);
    if (notice) main.prepend(notice);
  } catch (error) {
    if (error.status === 401) {  // the master key changed (rotated) since sign-in
      session.signOut();
      signIn("The gateway no longer accepts this master key: sign in again.");
    } else {
      main.replaceChildren(message("error", `Something went wrong: ${error.message}`));
    }
  }
}

function signIn(notice) {
  nav.hidden = signOutButton.hidden = true;
  const input = h("input", {
    type: "password", name: "master-key", id: "master-key", autocomplete: "off", required: true,
    placeholder: "sk-...", spellcheck: "false",
  });
  const problem = h("div", { class: "form-message" }, notice ? message("error", notice) : null);
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h("form", { class: "panel sign-in", "aria-label": "Sign in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "The console manages virtual keys and shows spend with the gateway's master key. "
      + "It is kept in this tab only, and forgotten when the tab closes."),
    h("label", { class: "field", for: "master-key" }, h("span", { class: "label" }, "Master key"), input),
    problem,
    h("div", { class: "actions" }, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    submit.disabled = true;
    problem.replaceChildren();
    try {
      await api("/key/list", { query: { size: 1 }, key });  // any admin call: says whether the key is the master key
      session.signIn(key);
      if (!location.hash || location.hash === "#/") location.hash = "#/keys";
      await route();
    } catch (error) {
      const text = error.status === 401 ? "Wrong master key: the gateway did not accept it."
        : error.status === 403 ? "That is a virtual key. The console needs the gateway's master key."
          : `Could not sign in: ${error.message}`;
      problem.replaceChildren(message("error", text));
      input.select();
    } finally {
      submit.disabled = false;
    }
  });
  main.replaceChildren(form);
  input.focus();
}

signOutButton.addEventListener("click", () => {
  session.signOut();
  state.keys = {};
  state.spend = {};
  history.replaceState(null, "", location.pathname);
  signIn();
});
window.addEventListener("hashchange", route);
route();
