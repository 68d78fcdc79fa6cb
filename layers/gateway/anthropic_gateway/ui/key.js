// One key's page: its settings (editable), spend and token counters, block / unblock, regenerate, delete.

import { api } from "./api.js";
import { badge, confirmAction, count, h, message, status, usd, when } from "./dom.js";
import { keyForm } from "./key_form.js";
import { budgetCell } from "./keys.js";
import { newKeyPanel } from "./new_key.js";

export async function keyView(main, token, flash) {
  main.replaceChildren(message("info", "Loading the key…"));
  let key;
  try {
    key = (await api("/key/info", { query: { key: token } })).info;
  } catch (error) {
    main.replaceChildren(back(), message("error", `Could not load this key: ${error.message}`));
    return;
  }
  const notices = h("div", { class: "stack" });
  const body = h("div");

  const show = (record, notice) => {
    key = record;
    if (notice) notices.replaceChildren(notice);
    body.replaceChildren(header(key, actions), usage(key), settings(key, show));
  };

  const act = async (work) => {
    try {
      await work();
    } catch (error) {
      notices.replaceChildren(message("error", error.message));
    }
  };

  const actions = {
    block: () => act(async () => {
      const blocked = !key.blocked;
      if (blocked && !(await confirmAction("Block this key?", `Every request with ${name(key)} gets 401 until it is unblocked.`, "Block key"))) return;
      const record = await api(blocked ? "/key/block" : "/key/unblock", { method: "POST", body: { key: key.token } });
      show(record, message("success", blocked ? "Key blocked: requests with it now get 401." : "Key unblocked."));
    }),
    regenerate: () => act(async () => {
      if (!(await confirmAction("Regenerate this key?", `${name(key)} stops working at once and a new key replaces it. Settings and spend stay.`, "Regenerate"))) return;
      const created = await api("/key/regenerate", { method: "POST", body: { key: key.token } });
      history.replaceState(null, "", `#/keys/${created.token}`);  // the hash changed; no reload, or the key is lost
      const { key: plain, ...record } = created;
      show(record, newKeyPanel(plain, { title: "Regenerated key" }));
    }),
    remove: () => act(async () => {
      if (!(await confirmAction("Delete this key?", `${name(key)} stops working at once. This cannot be undone.`, "Delete key"))) return;
      await api("/key/delete", { method: "POST", body: { keys: [key.token] } });
      flash(`Deleted ${name(key)}.`);
      location.hash = "#/keys";
    }),
  };

  show(key);
  main.replaceChildren(back(), notices, body);
}

function name(key) {
  return key.key_alias ? `“${key.key_alias}” (${key.key_name})` : key.key_name;
}

function back() {
  return h("a", { href: "#/keys", class: "back" }, "← All keys");
}

function header(key, actions) {
  return h("div", { class: "page-head" },
    h("div", {},
      h("h1", {}, key.key_alias ?? key.key_name, " ", badge(status(key))),
      h("p", { class: "muted" }, h("code", {}, key.key_name), " · hash ", h("code", { class: "hash" }, key.token))),
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "ghost", onclick: actions.block }, key.blocked ? "Unblock" : "Block"),
      h("button", { type: "button", class: "ghost", onclick: actions.regenerate }, "Regenerate"),
      h("button", { type: "button", class: "danger", onclick: actions.remove }, "Delete")));
}

function usage(key) {
  const stat = (label, value, extra) => h("div", { class: "stat" }, h("span", { class: "label" }, label), h("strong", {}, value), extra ?? null);
  return h("section", { class: "panel", "aria-label": "Usage" },
    h("h2", {}, "Spend and usage"),
    h("div", { class: "stats" },
      stat("Budget", budgetCell(key)),
      stat("Total spend", usd(key.total_spend)),
      stat("Reserved now", usd(key.reserved_spend), h("span", { class: "hint" }, "estimates of requests in flight")),
      stat("Requests", count(key.requests)),
      stat("Input tokens", count(key.input_tokens)),
      stat("Output tokens", count(key.output_tokens)),
      stat("Cache write tokens", count(key.cache_creation_input_tokens)),
      stat("Cache read tokens", count(key.cache_read_input_tokens)),
      stat("Created", when(key.created_at, true)),
      stat("Updated", when(key.updated_at, true)),
      stat("Expires", when(key.expires, true))));
}

function settings(key, show) {
  return h("section", { class: "panel", "aria-label": "Settings" },
    h("h2", {}, "Settings"),
    keyForm({
      key,
      submitLabel: "Save changes",
      onSubmit: async (changes) => {
        if (!Object.keys(changes).length) {
          show(key, message("info", "Nothing changed."));
          return;
        }
        const record = await api("/key/update", { method: "POST", body: { key: key.token, ...changes } });
        show(record, message("success", `Saved: ${Object.keys(changes).join(", ")}.`));
      },
    }));
}
