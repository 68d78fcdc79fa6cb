// The settings of a key as a form: every field /key/generate takes, and the same fields for /key/update.

import { h } from "./dom.js";
import { ownerPickers } from "./owners.js";

const FIELDS = [
  { name: "key_alias", label: "Alias", kind: "text", hint: "A unique, human-readable name." },
  { name: "models", label: "Models", kind: "list", hint: "Comma-separated, prefix* allowed. Empty: every model." },
  { name: "max_budget", label: "Max budget (USD)", kind: "number", hint: "Empty: no budget." },
  { name: "budget_duration", label: "Budget period", kind: "text", hint: "30s, 10m, 1h, 1d, 2w or 1mo: spend restarts each period." },
  { name: "duration", label: "Expires after", kind: "text", hint: "A duration from now, like 90d. Empty: never." },
  { name: "rpm_limit", label: "Requests per minute", kind: "integer" },
  { name: "tpm_limit", label: "Tokens per minute", kind: "integer" },
  { name: "max_parallel_requests", label: "Parallel requests", kind: "integer" },
  { name: "upstreams", label: "Upstreams", kind: "list", hint: "anthropic, bedrock or both in failover order. Empty: the deployment's default." },
  { name: "tags", label: "Tags", kind: "list", hint: "Comma-separated; added to every request made with the key." },
  { name: "team_id", label: "Team", kind: "owner", hint: "Its budget and limits apply to the key too." },
  { name: "user_id", label: "User", kind: "owner", hint: "Whose key it is; a member of the team, if there is one." },
  { name: "metadata", label: "Metadata", kind: "json", hint: "A JSON object, stored and shown, never interpreted." },
];

/**
 * A form for `key` (a key from the API) or, without one, a new key. `onSubmit(body)` gets the request body:
 * every filled field for a new key; only the changed fields (null clears one) for an existing key.
 */
export function keyForm({ key = null, submitLabel, onSubmit, onCancel }) {
  const inputs = {};
  const fields = FIELDS.map((field) => {
    const input = inputFor(field, key);
    inputs[field.name] = input;
    let hint = field.hint;
    if (key && field.name === "duration") {
      hint = `Now: ${key.expires ? `expires ${key.expires.slice(0, 16).replace("T", " ")} UTC` : "never expires"}. `
        + "Enter a duration to expire that long from now, or “never”. Empty: unchanged.";
    }
    return h("label", { class: `field ${field.kind === "json" ? "wide" : ""}` },
      h("span", { class: "label" }, field.label), input, hint ? h("span", { class: "hint" }, hint) : null);
  });
  if (!key) {
    inputs.key = h("input", { name: "key", type: "text", autocomplete: "off", spellcheck: "false", placeholder: "generated" });
    inputs.blocked = h("input", { name: "blocked", type: "checkbox" });
    fields.push(
      h("label", { class: "field" }, h("span", { class: "label" }, "Key (optional)"), inputs.key,
        h("span", { class: "hint" }, "Your own sk-... key instead of a generated one.")),
      h("label", { class: "field check" }, inputs.blocked, h("span", { class: "label" }, "Create it blocked")),
    );
  }
  ownerPickers(inputs.team_id, inputs.user_id);
  const problem = h("div", { class: "form-message" });
  const submit = h("button", { type: "submit", class: "primary" }, submitLabel);
  const form = h("form", { class: "key-form", novalidate: true },
    h("div", { class: "grid" }, fields),
    problem,
    h("div", { class: "actions" },
      onCancel ? h("button", { type: "button", class: "ghost", onclick: onCancel }, "Cancel") : null, submit));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    let body;
    try {
      body = key ? changes(inputs, key) : filled(inputs);
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

export function inputFor(field, key) {
  const current = key?.[field.name];
  const attributes = { name: field.name, autocomplete: "off", spellcheck: "false" };
  if (field.kind === "owner") {  // options come from the API (owners.js); until then, the current one only
    const select = h("select", attributes, h("option", { value: "" }, "(none)"));
    if (current) select.append(h("option", { value: current, selected: true }, current));
    return select;
  }
  if (field.kind === "json") {
    const text = current && Object.keys(current).length ? JSON.stringify(current, null, 2) : "";
    return h("textarea", { ...attributes, rows: 3, placeholder: '{"owner": "ana@example.com"}' }, text);
  }
  if (field.kind === "number" || field.kind === "integer") {
    Object.assign(attributes, { type: "number", min: 0, step: field.kind === "number" ? "any" : 1, inputmode: "decimal" });
  } else {
    attributes.type = "text";
  }
  let value = current ?? "";
  if (field.kind === "list") value = (current ?? []).join(", ");
  if (field.name === "duration") value = "";  // the API takes a duration from now, and keeps an expiry time
  const input = h("input", attributes);
  input.value = value;
  return input;
}

/** The value a field's input holds, as the API takes it; null when empty. Throws with a readable message. */
export function valueOf(field, input) {
  const text = input.value.trim();
  switch (field.kind) {
    case "list": {
      const items = text.split(",").map((item) => item.trim()).filter(Boolean);
      return items.length ? items : null;
    }
    case "number":
    case "integer": {
      if (text === "") return null;
      const number = Number(text);
      if (!Number.isFinite(number) || number < 0 || (field.kind === "integer" && !Number.isInteger(number))) {
        throw new Error(`${field.label}: expected ${field.kind === "integer" ? "a whole number" : "a number"} ≥ 0.`);
      }
      return number;
    }
    case "json": {
      if (text === "") return null;
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        throw new Error(`${field.label}: not valid JSON.`);
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new Error(`${field.label}: expected a JSON object.`);
      }
      return parsed;
    }
    default:
      return text === "" ? null : text;
  }
}

function filled(inputs) {
  const body = {};
  for (const field of FIELDS) {
    const value = valueOf(field, inputs[field.name]);
    if (value !== null) body[field.name] = value;
  }
  const key = inputs.key.value.trim();
  if (key) body.key = key;
  if (inputs.blocked.checked) body.blocked = true;
  return body;
}

function changes(inputs, key) {
  const body = {};
  for (const field of FIELDS) {
    let value = valueOf(field, inputs[field.name]);
    if (field.name === "duration") {
      if (value === null) continue;  // unchanged
      if (value.toLowerCase() === "never") value = null;
      body.duration = value;
      continue;
    }
    const before = key[field.name];
    const empty = (v) => v === null || v === undefined || (Array.isArray(v) && !v.length)
      || (typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length);
    if (empty(before) && empty(value)) continue;
    if (JSON.stringify(before) !== JSON.stringify(value)) body[field.name] = value;
  }
  return body;
}
