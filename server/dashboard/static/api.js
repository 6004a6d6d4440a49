// The dashboard's only way to the service: the public /v1 API with the signed-in token as a
// Bearer header. The token lives in sessionStorage (this tab only) and never in a URL.

const TOKEN_KEY = "wondercraft.token";
const ROLE_KEY = "wondercraft.role";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  get role() { return sessionStorage.getItem(ROLE_KEY); },
  get isAdmin() { return this.role === "admin"; },
  save(token, role) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(ROLE_KEY, role);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(ROLE_KEY);
  },
};

function headers(token, extra = {}) {
  return { Authorization: `Bearer ${token}`, Accept: "application/json", ...extra };
}

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || response.statusText);
  }
  return body;
}

// One request; `body` is sent as JSON (the API refuses other content types for bodies).
export async function api(method, path, body = undefined, token = session.token) {
  const init = { method, headers: headers(token), credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return answer(await fetch(path, init));
}

export const get = (path) => api("GET", path);

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

// Decides the role of a token: the admin may read /v1/admin/status, an agent is refused (403),
// a token that is no one's is 401.
export async function signIn(token) {
  try {
    await api("GET", "/v1/admin/status", undefined, token);
    return "admin";
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) return "agent";
    throw error;
  }
}

let openapiPaths = null;

// The paths the running service documents, so optional endpoints are used only where they exist.
export async function hasPath(path) {
  if (openapiPaths === null) {
    const document = await answer(await fetch("/v1/openapi.json", { credentials: "omit" }));
    openapiPaths = new Set(Object.keys(document.paths || {}));
  }
  return openapiPaths.has(path);
}

// Server-Sent Events read through fetch, since EventSource cannot send the Authorization header.
// Calls onEvent(data, id) for each event; resolves when the stream ends or `signal` aborts it.
export async function stream(path, onEvent, signal, lastEventId = null) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId !== null) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(path, { headers: headers(session.token, extra), signal, credentials: "omit", cache: "no-store" });
  if (!response.ok) await answer(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let id = null, kind = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("id: ")) id = line.slice(4);
          else if (line.startsWith("event: ")) kind = line.slice(7);
          else if (line.startsWith("data: ")) data.push(line.slice(6));
        }
        if (kind === "overflow") return;
        if (data.length) onEvent(JSON.parse(data.join("\n")), id);
      }
    }
  } catch (error) {
    if (signal && signal.aborted) return;
    throw error;
  }
}
