// The DAG as an SVG drawing, left to right. Layer = longest path from a root, so every edge
// points right; within a layer, nodes are ordered by the mean position of their neighbours
// (a few barycenter sweeps) to cut crossings. Edges into a task with `when` are dashed.

import { h, s } from "./dom.js";

const W = 176; // node size and spacing, px
const H = 46;
const GAP_X = 64;
const GAP_Y = 18;
const PAD = 16;
const SWEEPS = 4;

/**
 * Positions for tasks [{id, depends_on, when}] (a valid DAG, in definition order).
 * Returns {nodes: Map(id -> {id, layer, x, y}), edges: [{from, to, conditional}], width, height}.
 */
export function layout(tasks) {
  const ids = tasks.map((t) => t.id);
  const known = new Set(ids);
  const ups = new Map(tasks.map((t) => [t.id, (t.depends_on || []).filter((u) => known.has(u))]));
  const downs = new Map(ids.map((id) => [id, []]));
  for (const [id, deps] of ups) for (const u of deps) downs.get(u).push(id);

  // longest path from the roots, in topological order (Kahn)
  const layer = new Map();
  const waiting = new Map(ids.map((id) => [id, ups.get(id).length]));
  const ready = ids.filter((id) => waiting.get(id) === 0);
  for (let i = 0; i < ready.length; i++) {
    const id = ready[i];
    layer.set(id, Math.max(0, ...ups.get(id).map((u) => layer.get(u) + 1)));
    for (const d of downs.get(id)) {
      waiting.set(d, waiting.get(d) - 1);
      if (waiting.get(d) === 0) ready.push(d);
    }
  }
  for (const id of ids) if (!layer.has(id)) layer.set(id, 0); // a cycle: cannot happen once validated

  const layers = [];
  for (const id of ids) (layers[layer.get(id)] ||= []).push(id);
  const order = new Map();
  const renumber = (row) => row.forEach((id, i) => order.set(id, i));
  layers.forEach(renumber);
  const mean = (list, fallback) =>
    list.length ? list.reduce((sum, id) => sum + order.get(id), 0) / list.length : fallback;
  for (let sweep = 0; sweep < SWEEPS; sweep++) {
    const down = sweep % 2 === 0;
    const rows = down ? layers.slice(1) : layers.slice(0, -1).reverse();
    for (const row of rows) {
      const key = new Map(row.map((id) => [id, mean(down ? ups.get(id) : downs.get(id), order.get(id))]));
      row.sort((a, b) => key.get(a) - key.get(b) || order.get(a) - order.get(b));
      renumber(row);
    }
  }

  const tallest = Math.max(1, ...layers.map((row) => row.length));
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
  const nodes = new Map();
  layers.forEach((row, l) => {
    const used = row.length * H + (row.length - 1) * GAP_Y;
    const top = PAD + (height - PAD * 2 - used) / 2;
    row.forEach((id, i) => nodes.set(id, { id, layer: l, x: PAD + l * (W + GAP_X), y: top + i * (H + GAP_Y) }));
  });
  const when = new Map(tasks.map((t) => [t.id, Boolean(t.when)]));
  const edges = [];
  for (const [id, deps] of ups) for (const u of deps) edges.push({ from: u, to: id, conditional: when.get(id) });
  const width = PAD * 2 + Math.max(1, layers.length) * W + Math.max(0, layers.length - 1) * GAP_X;
  return { nodes, edges, width, height };
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function edgePath(a, b) {
  const x1 = a.x + W;
  const y1 = a.y + H / 2;
  const x2 = b.x;
  const y2 = b.y + H / 2;
  const dx = Math.max(24, (x2 - x1) / 2);
  return `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2 - 1},${y2}`;
}

/**
 * Draw tasks (definition tasks) into an <svg>. Returns {svg, update(tasks), select(id)}:
 * update() sets each node's data-state and second line from the status document's tasks.
 * onSelect(id) is called when a node is clicked or activated with Enter/Space.
 */
export function drawGraph(tasks, { onSelect, subtitle } = {}) {
  const { nodes, edges, width, height } = layout(tasks);
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const svg = s("svg", {
    class: "dag",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-label": `workflow graph, ${tasks.length} tasks`,
  });
  svg.append(
    s("defs", null,
      s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 8, markerHeight: 8, markerUnits: "userSpaceOnUse", orient: "auto" },
        s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }))),
  );
  const edgeLayer = s("g", { class: "edges" });
  for (const e of edges) {
    edgeLayer.append(
      s("path", {
        class: ["edge", e.conditional && "conditional"],
        d: edgePath(nodes.get(e.from), nodes.get(e.to)),
        "data-from": e.from,
        "data-to": e.to,
        "marker-end": "url(#arrow)",
      }),
    );
  }
  svg.append(edgeLayer);

  const nodeLayer = s("g", { class: "nodes" });
  const subs = new Map();
  const groups = new Map();
  for (const task of tasks) {
    const p = nodes.get(task.id);
    const sub = s("text", { class: "sub", x: 12, y: 35 }, subtitle ? subtitle(task) : "");
    const title = task.when ? `${task.id}\nwhen: ${task.when}` : task.id;
    const g = s("g", {
      class: "node",
      "data-task": task.id,
      "data-state": "none",
      transform: `translate(${p.x},${p.y})`,
      tabindex: 0,
      role: "button",
      "aria-label": task.id,
    },
      s("title", null, title),
      s("rect", { width: W, height: H, rx: 7 }),
      s("text", { class: "label", x: 12, y: 19 }, clip(task.id, 22)),
      sub,
      task.when ? s("text", { class: "when", x: W - 10, y: 19, "text-anchor": "end" }, "if") : null,
    );
    const choose = () => onSelect && onSelect(task.id);
    g.addEventListener("click", choose);
    g.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        choose();
      }
    });
    subs.set(task.id, sub);
    groups.set(task.id, g);
    nodeLayer.append(g);
  }
  svg.append(nodeLayer);

  return {
    svg,
    /** Apply {task_id: {state, attempts}} from a status document. */
    update(states) {
      for (const [id, g] of groups) {
        const t = states[id];
        const state = t ? t.state : "none";
        if (g.dataset.state !== state) g.dataset.state = state;
        g.setAttribute("aria-label", `${id}: ${state.replace("_", " ")}`);
        const text = t ? `${state.replace("_", " ")}${t.attempts > 1 ? ` · attempt ${t.attempts}` : ""}` : "";
        if (subs.get(id).textContent !== text) subs.get(id).textContent = text;
      }
    },
    /** Highlight one node and its edges (null: none). */
    select(id) {
      for (const [tid, g] of groups) g.classList.toggle("selected", tid === id);
      for (const path of edgeLayer.children) {
        path.classList.toggle("selected", id !== null && (path.dataset.from === id || path.dataset.to === id));
      }
    },
    task: (id) => byId.get(id),
  };
}

/** The colour key under a graph. */
export function legend(states) {
  return h("ul", { class: "legend", "aria-label": "task states" },
    states.map((state) => h("li", null, h("span", { class: "swatch", "data-state": state }), state.replace("_", " "))),
    h("li", null, h("span", { class: "dash" }), "conditional (when)"));
}

export const TASK_STATES = [
  "pending", "queued", "running", "retrying", "succeeded", "failed", "skipped", "upstream_failed", "cancelled",
];
