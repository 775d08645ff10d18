// A curate job's funnel (its stats.json): documents and bytes into each step, kept, and removed
// per reason, with bars scaled to the documents read; then a sample of rejected documents.
import { el, number } from "./console.js";

function bar(part, whole, label) {
  const pct = whole ? (100 * part) / whole : 0;
  return el("div", { class: "bar", role: "img", "aria-label": `${label}: ${pct.toFixed(1)}% of the documents read` },
    el("span", { style: `width:${pct.toFixed(2)}%` }));
}

export function funnel(parent, stats) {
  const total = stats.documents;
  const rows = (stats.steps ?? []).map((s) => {
    const removed = Object.entries(s.removed ?? {});
    return el("tr", { "data-step": s.step },
      el("th", { scope: "row", text: s.step }),
      el("td", { text: number(s.in.documents) }),
      el("td", {}, number(s.kept.documents), bar(s.kept.documents, total, `${s.step} kept`)),
      el("td", { text: removed.length ? removed.map(([r, c]) => `${r}: ${number(c.documents)}`).join(", ") : "—" }),
      el("td", { text: `${number(s.in.bytes)} → ${number(s.kept.bytes)}` }),
      el("td", { text: number(s.seconds, 3) }),
    );
  });
  parent.replaceChildren(
    el("p", {}, `${number(stats.documents)} documents (${number(stats.bytes)} bytes) read; `,
      `${number(stats.kept.documents)} kept (${number(stats.kept.bytes)} bytes).`),
    el("div", { class: "table-wrap" }, el("table", { id: "funnel-table" },
      el("caption", { text: "Documents per step: in, kept, and removed by reason" }),
      el("thead", {}, el("tr", {}, ...["Step", "In", "Kept", "Removed (reason: documents)", "Bytes in → kept", "Seconds"]
        .map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, rows))),
  );
}

export function rejected(parent, reasons) {
  const entries = Object.entries(reasons);
  if (entries.length === 0) {
    parent.replaceChildren(el("p", { class: "hint", text: "No document was rejected." }));
    return;
  }
  parent.replaceChildren(...entries.map(([reason, docs]) => el("details", { class: "reason", "data-reason": reason },
    el("summary", { text: `${reason} (${docs.length} shown)` }),
    el("ul", {}, docs.map((d) => el("li", {}, el("code", { text: d.id }), ` from ${d.source}: `, el("q", { text: d.text })))))));
}
