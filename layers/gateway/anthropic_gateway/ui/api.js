// Every call the console makes goes through here: the gateway's own JSON API with the master key, or with the
// single sign-on session (an HttpOnly cookie the page never sees; changes carry the session's CSRF token).
// The key lives in sessionStorage only (gone when the tab closes); never in a URL, a cookie or localStorage.

const STORAGE_NAME = "anthropic-gateway.master-key";

// The gateway's root, wherever it is mounted: the page is <root>/ui.
export const gatewayRoot = new URL(".", location.href).href.replace(/\/$/, "");

export const session = {
  key: () => sessionStorage.getItem(STORAGE_NAME),
  signIn: (key) => sessionStorage.setItem(STORAGE_NAME, key),
  signOut: () => { sessionStorage.removeItem(STORAGE_NAME); session.sso = null; },
  sso: null,  // GET /sso/session's answer (who, role, csrf_token) while signed in with SSO; memory only
  signedIn: () => Boolean(session.key() || session.sso),
};

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

/** JSON from the gateway, or an ApiError carrying the gateway's own message. */
export async function api(path, { method = "GET", query, body, key = session.key() } = {}) {
  const url = new URL(gatewayRoot + path);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = {};
  if (key) headers.authorization = `Bearer ${key}`;
  else if (session.sso && method !== "GET") headers["x-csrf-token"] = session.sso.csrf_token;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: key ? "omit" : "same-origin",  // the SSO session cookie, to this gateway only
    });
  } catch (error) {
    throw new ApiError(0, "network_error", `The gateway could not be reached (${error.message}).`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: a proxy's error page, say; the status says enough
  }
  if (!response.ok) {
    const message = data?.error?.message ?? `The gateway answered ${response.status} ${response.statusText}.`;
    throw new ApiError(response.status, data?.error?.type ?? "api_error", message);
  }
  return data;
}
