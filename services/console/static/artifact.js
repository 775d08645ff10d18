import { api, el, factList, me, number, setStatus, when } from "./console.js";
import { lineage } from "./lineage.js";

const { plural, artifactId } = document.body.dataset;

function evaluations(list) {
  if (!list?.length) return;
  const keys = [...new Set(list.flatMap((e) => Object.keys(e.metrics)))].sort();
  document.getElementById("evals-section").hidden = false;
  document.getElementById("evals").replaceChildren(el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Evaluated" }), el("th", { scope: "col", text: "Job" }),
      keys.map((k) => el("th", { scope: "col", text: k })))),
    el("tbody", {}, list.map((e) => el("tr", {}, el("td", { text: when(e.created_at) }),
      el("td", {}, e.job_id ? el("a", { href: `/console/jobs/${e.job_id}`, text: e.job_id }) : ""),
      keys.map((k) => el("td", { text: number(e.metrics[k]) }))))))));
}

await me;
const artifact = await api(`/api/v1/${plural}/${artifactId}`);
document.querySelector("h1").textContent = `${artifact.category} ${artifact.name}`;
factList(document.getElementById("facts"), [
  ["Id", artifact.id], ["Kind", artifact.kind], ["URI", el("code", { text: artifact.uri })],
  ["Made by", artifact.job_id ? el("a", { href: `/console/jobs/${artifact.job_id}`, text: `job ${artifact.job_id}` }) : "registered by hand"],
  ["Team", artifact.team], ["Created", when(artifact.created_at)],
  ...Object.entries(artifact.stats ?? {}).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, number(v)]),
]);
const chain = await api(`/api/v1/${plural}/${artifactId}/lineage`);
lineage(document.getElementById("lineage"), chain);
evaluations(artifact.evaluations);
setStatus(chain.complete ? "" : "Part of the lineage is hidden from this key or no longer recorded.");
