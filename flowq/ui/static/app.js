// The dashboard's entry point: a hash router over four pages. Each page is a function
// (root, {params, query}) -> {destroy()}; destroy() stops its polling when the page changes.

import { executionView } from "./execution.js";
import { executionsView } from "./executions.js";
import { workflowView, workflowsView } from "./workflows.js";
import { h, notice } from "./dom.js";

const ROUTES = [
  [/^executions\/([^/]+)$/, executionView, "executions"],
  [/^executions\/?$/, executionsView, "executions"],
  [/^workflows\/([^/]+)$/, workflowView, "workflows"],
  [/^workflows\/?$/, workflowsView, "workflows"],
];

let current = null;

function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  if (!raw) {
    location.replace("#/executions");
    return;
  }
  const [where, search = ""] = raw.split("?", 2);
  current?.destroy();
  current = null;
  const root = document.getElementById("view");
  root.replaceChildren();
  for (const [pattern, view, nav] of ROUTES) {
    const match = pattern.exec(where);
    if (!match) continue;
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === nav);
    }
    let params;
    try {
      params = match.slice(1).map(decodeURIComponent);
    } catch {
      break; // a malformed %-escape: no such page
    }
    current = view(root, { params, query: new URLSearchParams(search) });
    return;
  }
  root.append(notice("error", `No such page: #/${where}`), h("p", null, h("a", { href: "#/executions" }, "Executions")));
}

window.addEventListener("hashchange", route);
route();
