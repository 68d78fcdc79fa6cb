// A settings form for a team, user or tag: fields described once; the body built as the API takes it.
// Inputs and values are read as the key form reads them (key_form.js), so every page edits numbers alike.

import { h } from "./dom.js";
import { inputFor, valueOf } from "./key_form.js";

const SCOPE_FIELDS = [
  { name: "models", label: "Models", kind: "list", hint: "Comma-separated, prefix* allowed. Empty: every model." },
  { name: "max_budget", label: "Max budget (USD)", kind: "number", hint: "Empty: no budget." },
  { name: "budget_duration", label: "Budget period", kind: "text", hint: "30s, 10m, 1h, 1d, 2w or 1mo: spend restarts each period." },
  { name: "rpm_limit", label: "Requests per minute", kind: "integer" },
  { name: "tpm_limit", label: "Tokens per minute", kind: "integer" },
  { name: "max_parallel_requests", label: "Parallel requests", kind: "integer" },
];
const METADATA = { name: "metadata", label: "Metadata", kind: "json", hint: "A JSON object, stored and shown, never interpreted." };

export const TEAM_FIELDS = [
  { name: "team_id", label: "Team ID", kind: "text", newOnly: true, hint: "Optional: generated when empty." },
  { name: "team_alias", label: "Name", kind: "text", hint: "A human-readable name." },
  ...SCOPE_FIELDS,
  { name: "tags", label: "Tags", kind: "list", hint: "Comma-separated; added to every request of the team's keys." },
  METADATA,
];

export const ROLES = ["internal_user", "internal_user_viewer", "proxy_admin", "proxy_admin_viewer"];
export const USER_FIELDS = [
  { name: "user_id", label: "User ID", kind: "text", newOnly: true, hint: "Optional: generated when empty." },
  { name: "user_alias", label: "Name", kind: "text" },
  { name: "user_email", label: "Email", kind: "text", hint: "Unique; members can be added to teams by email." },
  { name: "user_role", label: "Role", kind: "select", options: ROLES, hint: "Stored now; enforced on the admin API later." },
  { name: "teams", label: "Teams", kind: "list", newOnly: true, hint: "Team IDs to join, comma-separated." },
  ...SCOPE_FIELDS,
  METADATA,
];

export const TAG_FIELDS = [
  { name: "name", label: "Tag", kind: "text", newOnly: true, hint: "As requests send it, like app:nightly." },
  { name: "description", label: "Description", kind: "text" },
  ...SCOPE_FIELDS,
];

/**
 * A form over `fields` for `record` (as the API answers it) or, without one, a new record. `onSubmit(body)` gets
 * every filled field for a new record, or only the changed fields (null clears one) of an existing one.
 * `extra` are more elements (checkboxes, say) put after the fields.
 */
export function settingsForm({ fields, record = null, submitLabel, onSubmit, onCancel, extra = [] }) {
  const shown = fields.filter((field) => !(record && field.newOnly));
  const inputs = {};
  const labels = shown.map((field) => {
    const input = field.kind === "select" ? selectFor(field, record) : inputFor(field, record);
    inputs[field.name] = input;
    return h("label", { class: `field ${field.kind === "json" ? "wide" : ""}` },
      h("span", { class: "label" }, field.label), input, field.hint ? h("span", { class: "hint" }, field.hint) : null);
  });
  const problem = h("div", { class: "form-message" });
  const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
  const form = h("form", { class: "key-form", novalidate: true },
    h("div", { class: "grid" }, labels, extra),
    problem,
    h("div", { class: "actions" },
      onCancel ? h("button", { type: "button", class: "ghost", onclick: onCancel }, "Cancel") : null, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    let body;
    try {
      body = record ? changed(shown, inputs, record) : filled(shown, inputs);
    } catch (error) {
      problem.replaceChildren(h("p", { class: "message error", role: "alert" }, error.message));
      return;
    }
    submit.disabled = true;
    try {
      await onSubmit(body);
    } catch (error) {
      problem.replaceChildren(h("p", { class: "message error", role: "alert" }, error.message));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function selectFor(field, record) {
  const select = h("select", { name: field.name }, field.options.map((value) => h("option", { value }, value)));
  select.value = record?.[field.name] ?? field.options[0];
  return select;
}

function filled(fields, inputs) {
  const body = {};
  for (const field of fields) {
    const value = valueOf(field, inputs[field.name]);
    if (value !== null) body[field.name] = value;
  }
  return body;
}

function changed(fields, inputs, record) {
  const body = {};
  const empty = (v) => v === null || v === undefined || (Array.isArray(v) && !v.length)
    || (typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length);
  for (const field of fields) {
    const value = valueOf(field, inputs[field.name]);
    const before = record[field.name];
    if (empty(before) && empty(value)) continue;
    if (JSON.stringify(before) !== JSON.stringify(value)) body[field.name] = value;
  }
  return body;
}
