// Small DOM helpers and formatters shared by the pages. No framework: the pages are few and
// mostly tables; each view builds its elements once and updates them in place on each poll.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("a", {href: "#/x", class: "link"}, "text", otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as h(). */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** The page state is in the hash: "#/executions?state=failed" -> ["executions"], params. */
export function href(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return `#/${path}${text ? `?${text}` : ""}`;
}

export const ENDED = new Set(["completed", "failed", "cancelled"]);
export const TASK_DONE = new Set(["succeeded", "failed", "skipped", "upstream_failed", "cancelled"]);

export function stateBadge(state) {
  return h("span", { class: "badge", "data-state": state || "none" }, (state || "—").replace("_", " "));
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** A UTC ISO timestamp in the browser's local time: "2025-11-25 18:34:02". */
export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Time of day with milliseconds, for the timeline. */
export function fmtClock(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso || "—";
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** "850 ms", "1.5 s", "2 min 03 s", "1 h 02 min". */
export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec < 10 ? sec.toFixed(1) : Math.round(sec)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${pad(Math.floor(sec % 60))} s`;
  return `${Math.floor(min / 60)} h ${pad(min % 60)} min`;
}

/** Milliseconds from one ISO time to another (or to now while it is still going on). */
export function elapsed(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? new Date(endIso).getTime() : Date.now();
  return end - new Date(startIso).getTime();
}

export function shortId(id) {
  return id.length > 13 ? `${id.slice(0, 8)}…` : id;
}

export function pretty(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

/** A progress cell: "3/5" with a bar. */
export function progress(done, total) {
  const bar = h("progress", { max: Math.max(total, 1), value: done, "aria-hidden": "true" });
  return h("span", { class: "progress" }, bar, h("span", { class: "count" }, `${done}/${total}`));
}

/** A message box; kind is "error" or "info". */
export function notice(kind, text, ...extra) {
  return h("div", { class: ["notice", kind], role: kind === "error" ? "alert" : "status" }, text, ...extra);
}
