// The executions table: newest first, filtered by state and workflow, paginated with the
// API's cursor (`next` of one page is the `cursor` of the following one), refreshed live.

import { call } from "./api.js";
import { ENDED, elapsed, fmtDuration, fmtTime, h, href, notice, progress, shortId, stateBadge } from "./dom.js";

const STATES = ["created", "running", "paused", "completed", "failed", "cancelled"];
const REFRESH_MS = 2000;
const COLUMNS = ["Execution", "Workflow", "Version", "State", "Started", "Duration", "Progress"];

/** Every registered workflow id, for the filter (a few pages at most). */
export async function workflowIds() {
  const ids = [];
  let cursor = null;
  for (let page = 0; page < 20; page++) {
    const q = new URLSearchParams({ limit: "500" });
    if (cursor) q.set("cursor", cursor);
    const result = await call(`workflows?${q}`);
    ids.push(...result.items.map((w) => w.id));
    cursor = result.next;
    if (!cursor) break;
  }
  return ids;
}

export function executionsView(root, { query }) {
  const state = query.get("state") || "";
  const workflow = query.get("workflow") || "";
  const limit = Math.min(500, Math.max(1, Number.parseInt(query.get("limit"), 10) || 25));
  const cursors = [null]; // the cursor of each page walked so far; the last one is shown
  let next = null;
  let alive = true;
  let timer = null;
  let seq = 0;
  let loads = 0;

  const filter = () => {
    location.hash = href("executions", { state: stateSelect.value, workflow: workflowSelect.value, limit: query.get("limit") });
  };
  const stateSelect = h("select", { id: "filter-state", onchange: filter },
    h("option", { value: "" }, "all states"),
    STATES.map((st) => h("option", { value: st, selected: st === state }, st)));
  const workflowSelect = h("select", { id: "filter-workflow", onchange: filter },
    h("option", { value: "" }, "all workflows"),
    workflow ? h("option", { value: workflow, selected: true }, workflow) : null);
  const tbody = h("tbody");
  const message = h("div");
  const newer = h("button", { type: "button", id: "page-newer", disabled: true, onclick: () => { cursors.pop(); load(); } }, "← Newer");
  const older = h("button", { type: "button", id: "page-older", disabled: true, onclick: () => { cursors.push(next); load(); } }, "Older →");
  const pageInfo = h("span", { class: "muted", id: "page-info" });

  root.append(
    h("div", { class: "toolbar" },
      h("h1", null, "Executions"),
      h("div", { class: "filters" },
        h("label", null, "State ", stateSelect),
        h("label", null, "Workflow ", workflowSelect))),
    message,
    h("div", { class: "table-scroll" },
      h("table", { class: "grid", id: "executions-table" },
        h("thead", null, h("tr", null, COLUMNS.map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
    h("div", { class: "pager" }, newer, pageInfo, older),
  );

  workflowIds().then((ids) => {
    if (!alive) return;
    for (const wid of ids) if (wid !== workflow) workflowSelect.append(h("option", { value: wid }, wid));
  }, () => {});
  load();

  async function load() {
    clearTimeout(timer);
    if (document.hidden && loads > 0) {
      timer = setTimeout(load, REFRESH_MS); // a background tab asks nothing
      return;
    }
    loads += 1;
    const mine = ++seq;
    const cursor = cursors[cursors.length - 1];
    const q = new URLSearchParams({ limit: String(limit) });
    if (state) q.set("state", state);
    if (workflow) q.set("workflow_id", workflow);
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await call(`executions?${q}`);
      if (!alive || mine !== seq) return;
      next = page.next;
      render(page.items);
      message.replaceChildren();
    } catch (err) {
      if (!alive || mine !== seq) return;
      message.replaceChildren(notice("error", err.message));
    }
    newer.disabled = cursors.length === 1;
    older.disabled = !next;
    pageInfo.textContent = `page ${cursors.length} · newest first`;
    timer = setTimeout(load, REFRESH_MS);
  }

  function render(items) {
    if (!items.length) {
      const filtered = state || workflow ? " matching these filters" : "";
      tbody.replaceChildren(h("tr", null, h("td", { colspan: COLUMNS.length, class: "muted empty" },
        `No executions${filtered} yet. Start one with \`flowq start\`, POST /workflows/{id}/executions or a definition's page.`)));
      return;
    }
    tbody.replaceChildren(...items.map((e) => {
      const link = href(`executions/${encodeURIComponent(e.execution_id)}`);
      const done = e.tasks_total - e.tasks_remaining;
      const took = elapsed(e.created_at, ENDED.has(e.state) ? e.updated_at : null);
      return h("tr", { "data-execution": e.execution_id, "data-state": e.state, class: "clickable", onclick: (event) => {
        if (!event.target.closest("a")) location.hash = link;
      } },
      h("td", null, h("a", { href: link, title: e.execution_id }, h("code", null, shortId(e.execution_id)))),
      h("td", { class: "workflow" }, e.workflow_id),
      h("td", { class: "num" }, String(e.version)),
      h("td", null, stateBadge(e.state)),
      h("td", null, h("time", { datetime: e.created_at, title: e.created_at }, fmtTime(e.created_at))),
      h("td", { class: "num" }, fmtDuration(took)),
      h("td", { class: "progress-cell" }, progress(done, e.tasks_total)));
    }));
  }

  return {
    destroy() {
      alive = false;
      clearTimeout(timer);
    },
  };
}
