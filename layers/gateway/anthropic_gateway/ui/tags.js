// The tags page: registered tags with their budget bars (/tag/list); registering, editing and deleting one.
// A registered tag's budget and limits hold on every request that carries it, whatever its key or team.

import { api } from "./api.js";
import { chips, confirmAction, h, message, when } from "./dom.js";
import { settingsForm, TAG_FIELDS } from "./form.js";
import { budgetCell } from "./keys.js";
import { limits } from "./teams.js";

export async function tagsView(main) {
  const createButton = h("button", { type: "button", class: "primary" }, "Register tag");
  const top = h("div", { class: "stack" });
  const listing = h("section", { class: "panel flush", "aria-label": "Tags" }, message("info", "Loading tags…"));

  const open = (title, form) => {
    top.replaceChildren(h("section", { class: "panel", "aria-label": title }, h("h2", {}, title), form));
    form.querySelector("input")?.focus();
  };

  const load = async (notice) => {
    try {
      const tags = await api("/tag/list");
      listing.replaceChildren(tagTable(tags, edit, remove));
      if (notice) top.replaceChildren(message("success", notice));
    } catch (error) {
      listing.replaceChildren(message("error", `Could not list the tags: ${error.message}`));
    }
  };

  createButton.addEventListener("click", () => {
    const close = () => top.replaceChildren();
    open("Register a tag", settingsForm({
      fields: TAG_FIELDS,
      submitLabel: "Register tag",
      onCancel: close,
      onSubmit: async (body) => load((await api("/tag/new", { method: "POST", body })).message),
    }));
  });

  const edit = (tag) => {
    const close = () => top.replaceChildren();
    open(`Edit ${tag.name}`, settingsForm({
      fields: TAG_FIELDS,
      record: tag,
      submitLabel: "Save changes",
      onCancel: close,
      onSubmit: async (changes) => load((await api("/tag/update", { method: "POST", body: { name: tag.name, ...changes } })).message),
    }));
  };

  const remove = async (tag) => {
    if (!(await confirmAction("Delete this tag?", `${tag.name} loses its budget and limits; requests may still carry it.`, "Delete tag"))) return;
    try {
      await load((await api("/tag/delete", { method: "POST", body: { name: tag.name } })).message);
    } catch (error) {
      top.replaceChildren(message("error", error.message));
    }
  };

  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Tags"), h("div", { class: "toolbar" }, createButton)),
    h("p", { class: "muted" }, "A registered tag has its own budget and limits, and its own CloudWatch Tag dimension value."),
    top,
    listing,
  );
  await load();
}

function tagTable(tags, edit, remove) {
  if (!tags.length) return message("info", "No registered tags yet.");
  const head = ["Tag", "Description", "Budget", "Limits (rpm / tpm / parallel)", "Models", "Created", ""];
  return h("div", { class: "table-wrap" }, h("table", { class: "tags" },
    h("thead", {}, h("tr", {}, head.map((title) => h("th", { scope: "col" }, title)))),
    h("tbody", {}, tags.map((tag) => h("tr", { "data-tag": tag.name },
      h("td", {}, h("code", {}, tag.name)),
      h("td", {}, tag.description ?? h("span", { class: "muted" }, "—")),
      h("td", { class: "budget" }, budgetCell(tag)),
      h("td", { class: "num" }, limits(tag)),
      h("td", {}, chips(tag.models, "all")),
      h("td", {}, when(tag.created_at)),
      h("td", {}, h("div", { class: "toolbar" },
        h("button", { type: "button", class: "ghost small", onclick: () => edit(tag) }, "Edit"),
        h("button", { type: "button", class: "ghost small", onclick: () => remove(tag) }, "Delete"))),
    )))));
}
