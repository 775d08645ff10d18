import { ApiError, api, dashboardLink, el, every, factList, me, number, seconds, setStatus, when } from "./console.js";
import { LineChart } from "./charts.js";
import { funnel, rejected } from "./funnel.js";

const jobId = document.body.dataset.jobId;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "STOPPED", "CANCELLED"]);
// The training metrics charted, in this order; any other metric with several points follows.
const CHARTED = ["loss", "val_loss", "lr", "grad_norm", "tokens_per_s"];
const TITLES = { loss: "Training loss", val_loss: "Validation loss", lr: "Learning rate",
  grad_norm: "Gradient norm", tokens_per_s: "Tokens per second" };
let job = null;
const charts = new Map();
const points = new Map(); // metric name -> Map(step -> value)
let shownOutputs = false;

function summary() {
  factList(document.getElementById("summary"), [
    ["State", el("span", { class: `state state-${job.state.toLowerCase()}`, id: "job-state", text: job.state })],
    ["Kind", job.kind], ["Name", job.name], ["Message", job.message],
    ["Pipeline", job.pipeline_id ? `${job.pipeline_id} (stage ${job.stage})` : ""],
    ["Owner", job.owner], ["Team", job.team], ["Attempts", `${job.attempts} of ${job.max_retries + 1}`],
    ["Queue position", job.queue_position], ["Created", when(job.created_at)],
    ["Started", when(job.started_at)], ["Duration", seconds(job.started_at, job.ended_at)],
  ]);
  document.getElementById("spec").textContent = JSON.stringify(job.spec, null, 2);
  const link = document.getElementById("ray-link");
  link.hidden = !job.dashboard_url;
  if (job.dashboard_url) link.href = dashboardLink(job.dashboard_url);
  // Only while the job may still be cancelled, and never for a read-only key (the API says 403).
  document.getElementById("cancel").hidden =
    TERMINAL.has(job.state) || document.body.dataset.role === "read_only";
}

async function metrics() {
  const records = (await api(`/api/v1/jobs/${jobId}/metrics`)).records;
  for (const r of records) {
    if (!points.has(r.name)) points.set(r.name, new Map());
    points.get(r.name).set(r.step, r.value);
  }
  const names = [...CHARTED.filter((n) => points.has(n)),
    ...[...points.keys()].filter((n) => !CHARTED.includes(n) && points.get(n).size > 1).sort()];
  if (names.length === 0) return;
  document.getElementById("charts-section").hidden = false;
  for (const name of names) {
    if (!charts.has(name)) {
      charts.set(name, new LineChart(document.getElementById("charts"),
        { id: `chart-${name}`, title: TITLES[name] ?? name, series: [name] }));
    }
    const series = [...points.get(name).entries()].sort((a, b) => a[0] - b[0]);
    charts.get(name).set([series.map((p) => p[0]), series.map((p) => p[1])]);
  }
}

async function logs() {
  const pre = document.getElementById("logs");
  try {
    const got = await api(`/api/v1/jobs/${jobId}/logs?tail=300`);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = (got.logs || "(no output yet)").replace(/\x1b\[[0-9;]*m/g, "");
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 409) throw e;
    pre.textContent = `(not started: ${job.state})`;
  }
}

function tokenization(stats) {
  const splits = stats.splits ?? {};
  document.getElementById("tokens-section").hidden = false;
  factList(document.getElementById("tokens"), [
    ["Vocabulary", `${number(stats.vocab_size)} (${number(stats.vocab_used)} used)`],
    ...Object.entries(splits).flatMap(([split, s]) => [
      [`${split}: tokens`, number(s.tokens)], [`${split}: documents`, number(s.documents)],
      [`${split}: bytes per token`, number(s.bytes_per_token, 3)],
    ]),
    ["Encoding speed", stats.encode_mb_per_s ? `${number(stats.encode_mb_per_s, 3)} MB/s` : ""],
    ["Seconds", number(stats.seconds, 3)],
  ]);
}

function evaluation(result) {
  const rows = Object.entries({ val_loss: result.val_loss, val_ppl: result.val_ppl, ...(result.metrics ?? {}) })
    .filter(([, v]) => v !== undefined && v !== null);
  document.getElementById("eval-section").hidden = false;
  document.getElementById("eval").replaceChildren(
    el("div", { class: "table-wrap" }, el("table", { id: "eval-table" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Task / metric" }), el("th", { scope: "col", text: "Value" }))),
      el("tbody", {}, rows.map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }), el("td", { text: number(v) })))))),
    result.sample ? el("p", {}, el("strong", { text: "Sample: " }), result.sample) : "",
  );
}

async function outputs() {
  if (shownOutputs || job.state !== "SUCCEEDED") return;
  shownOutputs = true;
  if (job.kind === "curate") {
    const stats = await api(`/api/v1/jobs/${jobId}/artifacts/stats.json`);
    document.getElementById("funnel-section").hidden = false;
    funnel(document.getElementById("funnel"), stats);
    rejected(document.getElementById("rejected"), (await api(`/console/api/jobs/${jobId}/rejected`)).reasons);
  } else if (job.kind === "tokenize" && job.result?.stats) {
    tokenization(job.result.stats);
  } else if (job.kind === "evaluate" && job.result) {
    evaluation(job.result);
  }
}

async function refresh() {
  job = await api(`/api/v1/jobs/${jobId}`);
  summary();
  await Promise.all([metrics(), logs(), outputs()]);
  setStatus(TERMINAL.has(job.state) ? `Job ${job.state.toLowerCase()}.` : `Job ${job.state.toLowerCase()}; updating live.`);
  return !TERMINAL.has(job.state);
}

document.getElementById("cancel").addEventListener("click", async (event) => {
  event.target.disabled = true;
  try {
    job = await api(`/api/v1/jobs/${jobId}/cancel`, { method: "POST" });
    summary();
    setStatus(`Cancelled: ${job.state}.`);
  } catch (e) {
    setStatus(`Not cancelled: ${e.message}`, true);
    event.target.disabled = false;
  }
});

await me;
every(1500, refresh);
