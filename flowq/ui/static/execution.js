// One execution: its DAG coloured by task state, live (GET /executions/{id} every second),
// the task details, the history as a timeline (followed with ?after=) and the controls.

import { call, path } from "./api.js";
import { drawGraph, legend, TASK_STATES } from "./graph.js";
import {
  ENDED, TASK_DONE, elapsed, fmtClock, fmtDuration, fmtTime, h, href, notice, pretty, progress, stateBadge,
} from "./dom.js";

const POLL_MS = 1000;
const POLL_ENDED_MS = 5000; // a failed execution may still be retried from elsewhere
const TIMELINE_MAX = 1000;
const HISTORY_MARGIN = 200; // ids re-read below the largest seen: a change can commit after a larger id

// SPEC section 2: the transitions a user may ask for, by the state they start from.
export const ACTIONS = [
  { action: "pause", label: "Pause", done: "Paused", from: ["running"] },
  { action: "resume", label: "Resume", done: "Resumed", from: ["paused"] },
  { action: "cancel", label: "Cancel", done: "Cancelled", from: ["created", "running", "paused"] },
  { action: "retry", label: "Retry", done: "Retried", from: ["failed"] },
];

function facts(pairs) {
  return h("dl", { class: "facts" },
    pairs.filter(Boolean).map(([term, value, attrs]) => h("div", attrs, h("dt", null, term), h("dd", null, value))));
}

function time(iso) {
  return iso ? h("time", { datetime: iso, title: iso }, fmtTime(iso)) : "—";
}

export function executionView(root, { params }) {
  const id = params[0];
  let alive = true;
  let timer = null;
  let doc = null;
  let graph = null;
  let selected = null;
  let panelKey = "";
  let lastEvent = 0;
  let busy = false;
  const events = [];
  const seen = new Set(); // event ids shown: two changes can commit out of id order

  const title = h("h1", null, "Execution");
  const badge = h("span", { id: "execution-state" });
  const buttons = ACTIONS.map(({ action, label, done }) =>
    h("button", { type: "button", class: ["action", action === "cancel" && "danger"], "data-action": action, hidden: true, onclick: () => act(action, done) }, label));
  const alertBox = h("div", { id: "action-message" });
  const pollBox = h("div", { id: "poll-message" });
  const factsBox = h("div");
  const graphBox = h("div", { class: "graph-scroll", id: "graph" });
  const panel = h("aside", { class: "panel task-panel", id: "task-panel", "aria-live": "polite" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const varsBox = h("pre", { class: "json" });

  root.append(
    h("div", { class: "toolbar" },
      h("div", null, h("p", { class: "crumbs" }, h("a", { href: href("executions") }, "Executions"), " / ", h("code", null, id)), title, badge),
      h("div", { class: "actions", id: "actions" }, buttons)),
    alertBox,
    pollBox,
    factsBox,
    h("div", { class: "split" },
      h("section", { class: "panel graph-panel" }, h("h2", null, "Graph"), graphBox, legend(TASK_STATES)),
      panel),
    h("section", { class: "panel" }, h("h2", null, "History"), timeline),
    h("details", { class: "panel" }, h("summary", null, "Vars"), varsBox),
  );
  renderPanel();
  start();

  async function start() {
    let first;
    try {
      first = await call(path`executions/${id}`);
    } catch (err) {
      if (alive) pollBox.replaceChildren(notice("error", err.message), " ", h("a", { href: href("executions") }, "Back to the executions"));
      return;
    }
    if (!alive) return;
    let tasks;
    try {
      const wf = await call(`${path`workflows/${first.workflow_id}`}?version=${first.version}`);
      tasks = wf.definition.tasks;
    } catch (err) {
      tasks = Object.keys(first.tasks).map((tid) => ({ id: tid, depends_on: [] }));
      pollBox.replaceChildren(notice("error", `The definition could not be read, so the graph has no edges: ${err.message}`));
    }
    if (!alive) return;
    graph = drawGraph(tasks, { onSelect: select });
    graphBox.replaceChildren(graph.svg);
    title.replaceChildren(h("a", { href: href(`workflows/${encodeURIComponent(first.workflow_id)}`, { version: first.version }) }, first.workflow_id), h("span", { class: "muted" }, ` v${first.version}`));
    apply(first);
    await tick();
  }

  async function tick() {
    timer = null;
    if (!alive) return;
    if (!document.hidden) {
      try {
        const [status, more] = await Promise.all([
          call(path`executions/${id}`),
          call(`${path`executions/${id}/history`}?after=${Math.max(0, lastEvent - HISTORY_MARGIN)}`),
        ]);
        if (!alive) return;
        addEvents(more);
        apply(status);
        pollBox.replaceChildren();
      } catch (err) {
        if (!alive) return;
        pollBox.replaceChildren(notice("error", `Live updates failed; trying again: ${err.message}`));
      }
    }
    if (alive) timer = setTimeout(tick, interval());
  }

  function interval() {
    if (doc && ENDED.has(doc.state)) return POLL_ENDED_MS;
    const size = doc ? Object.keys(doc.tasks).length : 0; // big documents: ask less often
    return Math.min(POLL_ENDED_MS, Math.max(POLL_MS, size / 2));
  }

  function apply(status) {
    doc = status;
    badge.replaceChildren(stateBadge(status.state));
    const tasks = Object.values(status.tasks);
    const done = tasks.filter((t) => TASK_DONE.has(t.state)).length;
    factsBox.replaceChildren(facts([
      ["Started", time(status.created_at)],
      ["Updated", time(status.updated_at)],
      ["Duration", fmtDuration(elapsed(status.created_at, ENDED.has(status.state) ? status.updated_at : null))],
      ["Progress", progress(done, tasks.length), { id: "execution-progress" }],
      ["Priority", String(status.priority)],
      status.idempotency_key && ["Idempotency key", h("code", null, status.idempotency_key)],
      status.error && ["Error", h("span", { class: "error-text" }, status.error)],
    ]));
    const vars = pretty(status.vars);
    if (varsBox.textContent !== vars) varsBox.textContent = vars;
    setButtons();
    graph?.update(status.tasks);
    renderPanel();
  }

  function setButtons() {
    for (const button of buttons) {
      const { from } = ACTIONS.find((a) => a.action === button.dataset.action);
      button.hidden = !doc || !from.includes(doc.state);
      button.disabled = busy;
    }
  }

  async function act(action, done) {
    if (busy) return;
    busy = true;
    setButtons();
    alertBox.replaceChildren();
    try {
      const status = await call(path`executions/${id}/${action}`, { method: "POST" });
      if (!alive) return;
      apply(status);
      alertBox.replaceChildren(notice("info", `${done} at ${fmtClock(new Date().toISOString())}.`));
    } catch (err) {
      if (!alive) return;
      alertBox.replaceChildren(notice("error", err.message));
    } finally {
      busy = false;
      if (alive) setButtons();
    }
  }

  function addEvents(all) {
    const more = all.filter((e) => !seen.has(e.id));
    if (!more.length) return;
    const atEnd = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 4;
    const origin = doc ? new Date(doc.created_at).getTime() : new Date(more[0].at).getTime();
    for (const e of more) {
      events.push(e);
      seen.add(e.id);
      lastEvent = Math.max(lastEvent, e.id);
      const subject = e.task_id
        ? h("button", { type: "button", class: "linkish", onclick: () => select(e.task_id) }, e.task_id)
        : h("strong", null, "execution");
      timeline.append(h("li", { "data-task": e.task_id || "", "data-to": e.to },
        h("time", { datetime: e.at, title: e.at }, fmtClock(e.at)),
        h("span", { class: "offset muted" }, `+${fmtDuration(new Date(e.at).getTime() - origin)}`),
        subject,
        h("span", { class: "change" }, e.from ? stateBadge(e.from) : null, e.from ? " → " : null, stateBadge(e.to)),
        e.reason ? h("span", { class: "reason muted" }, e.reason) : null));
    }
    while (timeline.children.length > TIMELINE_MAX) timeline.firstElementChild.remove();
    if (atEnd) timeline.scrollTop = timeline.scrollHeight; // follow, unless the reader scrolled up
  }

  function select(taskId) {
    selected = taskId;
    graph?.select(taskId);
    panelKey = "";
    renderPanel();
  }

  function renderPanel() {
    if (!selected || !doc || !graph) {
      if (panelKey !== "empty") {
        panelKey = "empty";
        panel.replaceChildren(h("h2", null, "Task"), h("p", { class: "muted" }, "Click a task in the graph to see its attempts, result, error and timestamps."));
      }
      return;
    }
    const t = doc.tasks[selected] || { state: "pending", attempts: 0, result: null, error: null };
    const def = graph.task(selected) || {};
    const mine = events.filter((e) => e.task_id === selected);
    const running = Boolean(t.started_at && !t.finished_at && !TASK_DONE.has(t.state));
    const tick = running ? Math.floor(Date.now() / 1000) : 0; // a running task's duration grows
    const key = JSON.stringify([selected, t, mine.length, tick]);
    if (key === panelKey) return; // unchanged: keep the reader's selection and scroll
    panelKey = key;
    panel.replaceChildren(
      h("div", { class: "panel-head" },
        h("h2", { id: "task-title" }, selected),
        stateBadge(t.state),
        h("button", { type: "button", class: "close", "aria-label": "close", onclick: () => select(null) }, "×")),
      facts([
        def.name && def.name !== selected && ["Name", def.name],
        ["Type", def.type || "—"],
        ["Attempts", String(t.attempts), { id: "task-attempts" }],
        ["Started", time(t.started_at)],
        ["Finished", time(t.finished_at)],
        ["Duration", t.started_at ? fmtDuration(elapsed(t.started_at, running ? null : t.finished_at)) : "—"],
        def.depends_on?.length && ["Depends on", def.depends_on.join(", ")],
        def.when && ["When", h("code", null, def.when)],
        def.trigger_rule && ["Trigger rule", def.trigger_rule],
      ]),
      h("h3", null, "Error"),
      t.error ? h("pre", { class: "error-text", id: "task-error" }, t.error) : h("p", { class: "muted" }, "none"),
      h("h3", null, "Result"),
      t.result === null || t.result === undefined
        ? h("p", { class: "muted", id: "task-result" }, "none")
        : h("pre", { class: "json", id: "task-result" }, pretty(t.result)),
      h("h3", null, "Events"),
      mine.length
        ? h("ol", { class: "timeline compact" }, mine.map((e) => h("li", null,
          h("time", { datetime: e.at, title: e.at }, fmtClock(e.at)),
          h("span", { class: "change" }, e.from ? stateBadge(e.from) : null, e.from ? " → " : null, stateBadge(e.to)),
          e.reason ? h("span", { class: "reason muted" }, e.reason) : null)))
        : h("p", { class: "muted" }, "none yet"),
    );
  }

  return {
    destroy() {
      alive = false;
      clearTimeout(timer);
    },
  };
}
