// An artifact's lineage as an SVG graph: the chain from the root (left) to the artifact (right),
// each node a link to its page; inputs outside the chain hang below the node that read them.
// The same graph as a list follows, for screen readers and narrow screens.
import { el } from "./console.js";

const NS = "http://www.w3.org/2000/svg";
const W = 200, H = 70, GAP = 60;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function text(x, y, value, cls) {
  const t = svg("text", { x, y, class: cls });
  t.textContent = value.length > 24 ? `${value.slice(0, 23)}…` : value;
  return t;
}

function node(x, y, a, current) {
  const href = a.category ? `/console/${a.category}s/${a.id}` : null;
  const box = svg("g", { class: `node${current ? " current" : ""}`, "data-artifact-id": a.id },
    svg("rect", { x, y, width: W, height: H, rx: 8 }),
    text(x + 10, y + 22, a.name ?? a.id, "name"),
    text(x + 10, y + 40, a.category ? `${a.category} · ${a.kind}` : "input", "kind"),
    text(x + 10, y + 58, a.category ? (a.job_id ? `made by job ${a.job_id}` : "registered by hand") : "", "kind"));
  if (!href) return box;
  return svg("a", { href }, box); // named by its text, as it reads
}

function edge(x1, y1, x2, y2) {
  return svg("g", { class: "edge" }, svg("line", { x1, y1, x2, y2, "marker-end": "url(#arrow)" }));
}

export function lineage(parent, { chain, artifact_id: current }) {
  const ordered = [...chain].reverse(); // root first
  const ids = new Set(ordered.map((a) => a.id));
  const extras = ordered.map((a) => a.inputs.filter((i) => !ids.has(i)));
  const hasExtras = extras.some((e) => e.length);
  const width = ordered.length * (W + GAP) + 20;
  const height = hasExtras ? 2 * H + 80 + 20 : H + 40;
  const graph = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "group",
    "aria-label": `Lineage of ${current}: ${ordered.length} artifacts` },
  svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto" },
    svg("path", { d: "M0,0 L10,5 L0,10 z" }))));
  ordered.forEach((a, i) => {
    const x = 10 + i * (W + GAP), y = 24;
    if (i > 0) graph.append(edge(x - GAP, y + H / 2, x, y + H / 2));
    graph.append(node(x, y, a, a.id === current));
    extras[i].forEach((input, j) => {
      const ix = x + j * 20, iy = y + H + 70;
      const name = input.includes("/") ? `…/${input.split("/").filter(Boolean).at(-1)}` : input;
      graph.append(edge(ix + W / 2, iy, x + W / 2, y + H), node(ix, iy, { id: input, name }, false));
    });
  });
  const list = el("ol", { class: "lineage-list" }, ordered.map((a) => el("li", {},
    el("a", { href: `/console/${a.category}s/${a.id}`, text: `${a.category} ${a.name}` }),
    ` (${a.kind})`, a.job_id ? [" made by ", el("a", { href: `/console/jobs/${a.job_id}`, text: `job ${a.job_id}` })] : "",
    a.inputs.length ? ` from ${a.inputs.join(", ")}` : "")));
  parent.replaceChildren(el("div", { class: "graph-scroll" }, graph), list);
}
