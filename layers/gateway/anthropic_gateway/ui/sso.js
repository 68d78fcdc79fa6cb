// Single sign-on in the console: the "Sign in with SSO" button, the session it leaves, and signing out.
// The session is an HttpOnly cookie the gateway set at /sso/callback; this page only learns who is signed in and
// the session's CSRF token (GET /sso/session), which every change it asks for carries (api.js).

import { api, gatewayRoot, session } from "./api.js";
import { h } from "./dom.js";

// How /sso/callback says a sign-in failed (#/sign-in/<why>), for the person who tried.
const FAILURES = {
  denied: "The sign-in was declined at the identity provider.",
  expired: "The sign-in took too long or was started in another tab: try again.",
  refused: "The gateway could not verify the identity provider's answer: try again, or ask an admin.",
  blocked: "Your user is blocked on this gateway: ask an admin.",
  unavailable: "The identity provider or the gateway's storage could not be reached: try again shortly.",
};

export function failure(why) {
  return FAILURES[why] ?? "Single sign-on failed: try again.";
}

/** Whether this tab's cookie holds a session (then session.sso says whose). */
export async function restoreSession() {
  try {
    session.sso = await api("/sso/session", { key: null });
  } catch {
    session.sso = null;
  }
  return Boolean(session.sso);
}

/** The sign-in button, when the gateway has single sign-on (null otherwise). */
export async function signInButton() {
  let config = null;
  try {
    config = await api("/sso/config", { key: null });
  } catch {
    return null;
  }
  if (!config?.enabled) return null;
  return h("button", {
    type: "button", class: "primary sso",
    onclick: () => { location.href = `${gatewayRoot}/sso/login`; },  // the whole page goes to the provider
  }, "Sign in with SSO");
}

export async function signOut() {
  try {
    await api("/sso/logout", { method: "POST", key: null });
  } finally {
    session.sso = null;
  }
}

/** "Signed in as ..." for the top bar. */
export function whoText() {
  const who = session.sso;
  return who ? `${who.email ?? who.name ?? who.user_id} · ${who.role}` : "";
}
