// Definitions: the registered workflows with their versions; one version's graph, tasks and
// compiled Celery plan (the text of `flowq plan`), and a form to start an execution of it.

import { call, path } from "./api.js";
import { drawGraph } from "./graph.js";
import { fmtTime, h, href, notice, pretty } from "./dom.js";

const PAGE = 100;

export function workflowsView(root) {
  const cursors = [null];
  let next = null;
  let alive = true;
  const tbody = h("tbody");
  const message = h("div");
  const newer = h("button", { type: "button", disabled: true, onclick: () => { cursors.pop(); load(); } }, "← Previous");
  const older = h("button", { type: "button", disabled: true, onclick: () => { cursors.push(next); load(); } }, "Next →");

  root.append(
    h("div", { class: "toolbar" }, h("h1", null, "Definitions")),
    message,
    h("div", { class: "table-scroll" },
      h("table", { class: "grid", id: "workflows-table" },
        h("thead", null, h("tr", null, ["Workflow", "Name", "Newest", "Versions", "Updated"].map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
    h("div", { class: "pager" }, newer, older),
  );
  load();

  async function load() {
    const cursor = cursors[cursors.length - 1];
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await call(`workflows?${q}`);
      if (!alive) return;
      next = page.next;
      render(page.items);
      message.replaceChildren();
    } catch (err) {
      if (alive) message.replaceChildren(notice("error", err.message));
    }
    newer.disabled = cursors.length === 1;
    older.disabled = !next;
  }

  function render(items) {
    if (!items.length) {
      tbody.replaceChildren(h("tr", null, h("td", { colspan: 5, class: "muted empty" },
        "No workflows registered yet: `flowq register FILE` or POST /workflows.")));
      return;
    }
    tbody.replaceChildren(...items.map((w) => {
      const page = (version) => href(`workflows/${encodeURIComponent(w.id)}`, { version });
      return h("tr", { "data-workflow": w.id },
        h("td", null, h("a", { href: page(w.version) }, w.id)),
        h("td", null, w.name || h("span", { class: "muted" }, "—")),
        h("td", { class: "num" }, String(w.version)),
        h("td", { class: "versions" }, w.versions.map((v) => h("a", { class: "chip", href: page(v) }, `v${v}`))),
        h("td", null, h("time", { datetime: w.updated_at, title: w.updated_at }, fmtTime(w.updated_at))));
    }));
  }

  return { destroy() { alive = false; } };
}

function taskSummary(task) {
  const what = { python: task.handler, http: task.method && `${task.method} ${task.url}`, sql: task.connection, file: task.operation };
  return what[task.type] || "";
}

function tasksTable(tasks) {
  const head = ["Task", "Type", "Runs", "Depends on", "When", "Trigger rule"];
  const rows = tasks.map((t) => h("tr", { "data-task": t.id },
    h("td", null, h("code", null, t.id)),
    h("td", null, t.type),
    h("td", { class: "wrap" }, h("code", null, taskSummary(t))),
    h("td", null, (t.depends_on || []).join(", ")),
    h("td", null, t.when ? h("code", null, t.when) : ""),
    h("td", null, t.trigger_rule || "")));
  return h("div", { class: "table-scroll" },
    h("table", { class: "grid", id: "tasks-table" },
      h("thead", null, h("tr", null, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", null, rows)));
}

export function workflowView(root, { params, query }) {
  const id = params[0];
  const version = query.get("version");
  let alive = true;
  const message = h("div");
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: href("workflows") }, "Definitions"), " / ", h("code", null, id)),
    message,
  );
  show();

  async function show() {
    let wf;
    try {
      wf = await call(`${path`workflows/${id}`}${version ? `?version=${encodeURIComponent(version)}` : ""}`);
    } catch (err) {
      if (alive) message.replaceChildren(notice("error", err.message));
      return;
    }
    if (!alive) return;
    const planText = h("pre", { class: "plan", id: "plan-text" }, "…");
    const versionSelect = h("select", {
      id: "version-select",
      onchange: () => { location.hash = href(`workflows/${encodeURIComponent(id)}`, { version: versionSelect.value }); },
    }, wf.versions.map((v) => h("option", { value: v, selected: v === wf.version }, `v${v}`)));
    const tasks = wf.definition.tasks;
    const graph = drawGraph(tasks, { subtitle: (t) => `${t.type}${t.trigger_rule ? ` · ${t.trigger_rule}` : ""}` });

    root.append(
      h("div", { class: "toolbar" },
        h("div", null,
          h("h1", null, wf.id, h("span", { class: "muted" }, ` v${wf.version}`)),
          wf.name ? h("p", { class: "subtitle" }, wf.name) : null),
        h("div", { class: "filters" },
          h("label", null, "Version ", versionSelect),
          h("a", { class: "button", href: href("executions", { workflow: wf.id }) }, "Executions →"))),
      h("p", { class: "muted small" }, "digest ", h("code", null, wf.digest)),
      startForm(wf),
      h("section", { class: "panel" }, h("h2", null, "Graph"), h("div", { class: "graph-scroll", id: "graph" }, graph.svg)),
      h("section", { class: "panel" }, h("h2", null, `Tasks (${tasks.length})`), tasksTable(tasks)),
      h("section", { class: "panel" }, h("h2", null, "Compiled plan"),
        h("p", { class: "muted small" }, "The Celery canvas flowq runs (", h("code", null, "flowq plan"), ")."),
        planText,
        h("details", null, h("summary", null, "as JSON"), h("pre", { class: "json", id: "plan-json" }, pretty(wf.plan)))),
      h("details", { class: "panel" }, h("summary", null, "Definition (JSON)"), h("pre", { class: "json" }, pretty(wf.definition))),
    );

    try {
      const plan = await call(`${path`ui/api/workflows/${id}/plan`}?version=${wf.version}`);
      if (alive) planText.textContent = plan.text;
    } catch (err) {
      if (alive) planText.replaceWith(notice("error", `The plan text could not be read: ${err.message}`));
    }
  }

  function startForm(wf) {
    const vars = h("textarea", { id: "start-vars", rows: 4, spellcheck: "false" }, "{}");
    const priority = h("input", { id: "start-priority", type: "number", min: 0, max: 9, placeholder: "5" });
    const result = h("div");
    const submit = async (event) => {
      event.preventDefault();
      let parsed;
      try {
        parsed = JSON.parse(vars.value || "{}");
      } catch (err) {
        result.replaceChildren(notice("error", `vars: not JSON (${err.message})`));
        return;
      }
      const body = { vars: parsed, version: wf.version };
      if (priority.value !== "") body.priority = Number(priority.value);
      try {
        const status = await call(path`workflows/${wf.id}/executions`, { method: "POST", body });
        location.hash = href(`executions/${encodeURIComponent(status.execution_id)}`);
      } catch (err) {
        const problems = err.problems?.length > 1 ? h("ul", null, err.problems.map((p) => h("li", null, p))) : null;
        result.replaceChildren(notice("error", err.message, problems));
      }
    };
    return h("details", { class: "panel", id: "start" },
      h("summary", null, `Start an execution of v${wf.version}`),
      h("form", { class: "start-form", onsubmit: submit },
        h("label", null, "vars (JSON)", vars),
        h("label", null, "priority (0–9)", priority),
        h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Start"))),
      result);
  }

  return { destroy() { alive = false; } };
}
