import { api, el, me, number, setStatus, when } from "./console.js";
import { LineChart } from "./charts.js";

function fmt(m) {
  if (!m) return "—";
  return m.stderr !== null && m.stderr !== undefined ? `${number(m.mean)} ± ${number(m.stderr, 2)}` : number(m.mean);
}

function table(result) {
  const keys = result.metrics ?? [];
  return el("div", { class: "table-wrap" }, el("table", {},
    el("caption", { text: `Mean over seeds ± standard error; Δ against ${result.baseline}` }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Arm" }), el("th", { scope: "col", text: "Seeds" }),
      keys.map((k) => el("th", { scope: "col", text: k })), keys.map((k) => el("th", { scope: "col", text: `Δ ${k}` })))),
    el("tbody", {}, Object.entries(result.arms ?? {}).map(([arm, e]) => el("tr", {},
      el("th", { scope: "row", text: arm }), el("td", { text: e.seeds.join(", ") }),
      keys.map((k) => el("td", { text: fmt(e.metrics[k]) })),
      keys.map((k) => {
        const d = e.metrics[k]?.difference;
        return el("td", { text: d ? `${d.value >= 0 ? "+" : ""}${number(d.value)}${d.stderr ? ` ± ${number(d.stderr, 2)}` : ""}` : "—" });
      }))))));
}

async function curves(section, job) {
  const compare = await api(`/api/v1/jobs/${job.id}/artifacts/compare.json`);
  const runs = Object.entries(compare.curves ?? {});
  if (!runs.length) return;
  const steps = [...new Set(runs.flatMap(([, pts]) => pts.map((p) => p[0])))].sort((a, b) => a - b);
  const chart = new LineChart(section, { id: `curves-${job.id}`, title: "Validation loss of every run", series: runs.map(([n]) => n) });
  chart.set([steps, ...runs.map(([, pts]) => {
    const at = new Map(pts);
    return steps.map((s) => (at.has(s) ? at.get(s) : null));
  })]);
}

await me;
const jobs = (await api("/api/v1/jobs?kind=compare&limit=50")).data;
const root = document.getElementById("ablations");
if (!jobs.length) root.replaceChildren(el("p", { text: "No ablation has run yet." }));
for (const job of jobs) {
  const section = el("section", { class: "card", "aria-label": `Ablation ${job.name ?? job.id}` },
    el("h2", {}, el("a", { href: `/console/jobs/${job.id}`, text: job.name ?? job.id })),
    el("p", { class: "hint", text: `${job.state}; ${when(job.created_at)}${job.pipeline_id ? `; pipeline ${job.pipeline_id}` : ""}` }));
  root.append(section);
  if (job.state === "SUCCEEDED" && job.result?.arms) {
    section.append(table(job.result));
    curves(section, job).catch((e) => setStatus(e.message, true));
  }
}
