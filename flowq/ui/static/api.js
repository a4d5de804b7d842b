// The HTTP API of SPEC section 5, from the browser. The dashboard lives at <api>/ui/, so the
// API's routes are one level up: this keeps working behind a proxy that adds a path prefix.
// With FLOWQ_API_TOKEN set, a 401 asks for the token (once for all concurrent calls), keeps it
// in sessionStorage and repeats the call with `Authorization: Bearer <token>`.

const ROOT = new URL("../", document.baseURI);
const TOKEN_KEY = "flowq.token";

/** An answer other than 2xx: `message` is the API's one-line `detail`. */
export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }

  /** The one-line problems of a 422, if any. */
  get problems() {
    return Array.isArray(this.body?.problems) ? this.body.problems : [];
  }
}

let asking = null;

// Header values travel as bytes, and the API compares the token's UTF-8 bytes: send those
// (as one char per byte), not the browser's Latin-1 rendering of a non-ASCII token.
function asBytes(text) {
  return String.fromCharCode(...new TextEncoder().encode(text));
}

function askToken(refused) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent = refused
    ? "The API refused that token. Enter it again."
    : "This flowq API needs a token (FLOWQ_API_TOKEN).";
  asking = new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      form.removeEventListener("submit", submit);
      dialog.removeEventListener("cancel", keep);
      input.value = "";
      dialog.close();
      asking = null;
      resolve();
    };
    const keep = (event) => event.preventDefault(); // Escape: nothing works without a token
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", keep);
    dialog.showModal();
    input.focus();
  });
  return asking;
}

function connection(ok, text) {
  const el = document.getElementById("connection");
  if (!el) return;
  el.textContent = text;
  el.dataset.ok = String(ok);
}

/**
 * Call the API: call("executions?limit=20"), call("executions/ID/pause", {method: "POST"}).
 * Resolves to the parsed JSON body; rejects with ApiError (status 0: no answer at all).
 */
export async function call(path, { method = "GET", body } = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${asBytes(token)}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(new URL(path, ROOT), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      connection(false, "API unreachable");
      throw new ApiError(0, `the API does not answer (${err.message}); is \`flowq api\` running?`);
    }
    if (response.status === 401) {
      if (token && sessionStorage.getItem(TOKEN_KEY) === token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(Boolean(token));
      continue;
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (response.status >= 500) connection(false, `API error ${response.status}`);
    else connection(true, "");
    if (!response.ok) {
      const detail = typeof data?.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, detail, data);
    }
    return data;
  }
}

export const path = (strings, ...values) =>
  strings.reduce((out, part, i) => out + part + (i < values.length ? encodeURIComponent(values[i]) : ""), "");
