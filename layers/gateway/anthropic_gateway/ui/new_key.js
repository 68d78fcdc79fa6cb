// A key in plain text, shown once: right after /key/generate or /key/regenerate. It lives only in this panel.

import { gatewayRoot } from "./api.js";
import { h } from "./dom.js";

export function newKeyPanel(plainKey, { onDone, title = "Your new key" } = {}) {
  const base = `${gatewayRoot}/anthropic`;
  const shell = `export ANTHROPIC_BASE_URL=${base} ANTHROPIC_API_KEY=${plainKey}`;
  const python = [
    "import anthropic",
    "",
    `client = anthropic.Anthropic(base_url="${base}", api_key="${plainKey}")`,
    "message = client.messages.create(",
    '    model="claude-sonnet-4-5", max_tokens=1024,',
    '    messages=[{"role": "user", "content": "Hello, Claude"}],',
    ")",
    "print(message.content[0].text)",
  ].join("\n");
  const panel = h("section", { class: "panel new-key", "aria-label": title },
    h("h2", {}, title),
    h("p", {}, "Copy it now: it is shown only this once. The gateway keeps only its hash."),
    h("div", { class: "secret" }, h("code", { id: "new-key-value" }, plainKey), copyButton(plainKey, "Copy key")),
    h("h3", {}, "Shell (Claude Code, SDKs, curl)"),
    snippet(shell),
    h("h3", {}, "Python SDK"),
    snippet(python),
    h("div", { class: "actions" },
      h("button", { type: "button", class: "primary", onclick: () => { panel.remove(); onDone?.(); } }, "Done, I saved it")));
  return panel;
}

function snippet(text) {
  return h("div", { class: "snippet" }, h("pre", {}, h("code", {}, text)), copyButton(text, "Copy"));
}

function copyButton(text, label) {
  const button = h("button", { type: "button", class: "ghost small" }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Select and copy";  // no clipboard (an http:// page that is not localhost)
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  });
  return button;
}
