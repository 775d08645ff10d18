import { api, dashboardLink, el, every, me, seconds, setStatus } from "./console.js";

const body = document.querySelector("#jobs tbody");
const search = document.getElementById("search");
const state = document.getElementById("state");
const kind = document.getElementById("kind");
const live = document.getElementById("live");
const pipeline = new URLSearchParams(location.search).get("pipeline");
let jobs = [];

function matches(job, text) {
  if (!text) return true;
  const hay = [job.id, job.name, job.owner, job.team, job.pipeline_id, job.stage].join(" ").toLowerCase();
  return hay.includes(text.toLowerCase());
}

function row(job) {
  const name = job.name ? `${job.name} (${job.id})` : job.id;
  return el("tr", { "data-job-id": job.id, "data-state": job.state },
    el("td", {}, el("a", { href: `/console/jobs/${job.id}`, text: name })),
    el("td", { text: job.kind }),
    el("td", {}, el("span", { class: `state state-${job.state.toLowerCase()}`, text: job.state })),
    el("td", {}, job.pipeline_id
      ? el("a", { href: `/console/?pipeline=${encodeURIComponent(job.pipeline_id)}`,
        "aria-label": `Pipeline ${job.pipeline_id}'s jobs`, text: `${job.pipeline_id} · ${job.stage ?? ""}` })
      : ""),
    el("td", { text: job.owner ?? "" }),
    el("td", { text: job.team ?? "" }),
    el("td", { text: seconds(job.started_at, job.ended_at) }),
    el("td", { text: job.queue_position ?? "" }),
    el("td", {}, job.dashboard_url
      ? el("a", { href: dashboardLink(job.dashboard_url), target: "_blank", rel: "noopener noreferrer",
        "aria-label": `Job ${job.id} in the Ray dashboard`, text: "dashboard" })
      : ""),
  );
}

// Only one pipeline's stages: its name and state above the table, and a way back to all jobs.
async function showPipeline() {
  const p = await api(`/api/v1/pipelines/${encodeURIComponent(pipeline)}`);
  let banner = document.getElementById("pipeline");
  if (!banner) {
    banner = el("p", { id: "pipeline", class: "notice" });
    document.getElementById("filters").after(banner);
  }
  banner.replaceChildren(`Pipeline ${p.name} (${p.id}): ${p.state}, ${p.jobs.length} stages. `,
    el("a", { href: "/console/", text: "Show every job" }));
}

function render() {
  const shown = jobs.filter((j) => matches(j, search.value.trim()));
  body.replaceChildren(...shown.map(row));
  setStatus(`${shown.length} of ${jobs.length} jobs${live.checked ? ", updating live" : ""}`);
}

async function load() {
  const query = new URLSearchParams({ limit: "200" });
  if (state.value) query.set("state", state.value);
  if (kind.value) query.set("kind", kind.value);
  if (pipeline) query.set("pipeline_id", pipeline);
  jobs = (await api(`/api/v1/jobs?${query}`)).data;
  if (pipeline) await showPipeline();
  render();
}

await me;
search.addEventListener("input", render);
state.addEventListener("change", load);
kind.addEventListener("change", load);
document.getElementById("filters").addEventListener("submit", (e) => e.preventDefault());
every(2000, async () => {
  if (live.checked || jobs.length === 0) await load();
});
