import { api, el, me, number, setStatus } from "./console.js";

const LOWER_IS_BETTER = /loss|ppl|perplexity|bits_per_byte|bpb|word_perplexity/i;

async function ratings() {
  const task = document.getElementById("lb-task").value.trim();
  const board = await api(`/api/v1/ratings/leaderboard${task ? `?task=${encodeURIComponent(task)}` : ""}`);
  document.getElementById("ratings-caption").textContent =
    `${board.ratings} ratings${task ? ` of task ${task}` : ""}; intervals at ${board.confidence * 100}%`;
  const ci = (v, [lo, hi]) => `${v.toFixed(0)} (${lo.toFixed(0)}–${hi.toFixed(0)})`;
  document.querySelector("#ratings-board tbody").replaceChildren(...board.models.map((m, i) =>
    el("tr", { "data-model": m.model },
      el("td", { text: i + 1 }), el("th", { scope: "row", text: m.model }), el("td", { text: m.games }),
      el("td", { class: "wins", text: m.wins }), el("td", { text: m.losses }), el("td", { text: m.ties }),
      el("td", { text: `${(100 * m.win_rate).toFixed(1)}%` }), el("td", { text: ci(m.elo, m.elo_ci) }),
      el("td", { text: ci(m.bt, m.bt_ci) }))));
}

async function evaluations() {
  const models = (await api("/api/v1/models?limit=1000")).data.filter((m) => m.evaluations?.length);
  const latest = models.map((m) => ({ model: m, metrics: m.evaluations.at(-1).metrics }));
  const keys = [...new Set(latest.flatMap((r) => Object.keys(r.metrics)))].sort()
    .filter((k) => latest.some((r) => typeof r.metrics[k] === "number"));
  const range = Object.fromEntries(keys.map((k) => {
    const vs = latest.map((r) => r.metrics[k]).filter((v) => typeof v === "number");
    return [k, [Math.min(...vs), Math.max(...vs)]];
  }));
  const norm = (k, v) => {
    if (typeof v !== "number") return "";
    const [lo, hi] = range[k];
    if (hi === lo) return "1.00";
    const x = (v - lo) / (hi - lo);
    return (LOWER_IS_BETTER.test(k) ? 1 - x : x).toFixed(2);
  };
  const table = document.getElementById("eval-board");
  table.querySelector("thead").replaceChildren(el("tr", {}, el("th", { scope: "col", text: "Model" }),
    keys.map((k) => el("th", { scope: "col", text: `${k}${LOWER_IS_BETTER.test(k) ? " ↓" : " ↑"} (raw · norm.)` }))));
  table.querySelector("tbody").replaceChildren(...latest.map((r) => el("tr", {},
    el("th", { scope: "row" }, el("a", { href: `/console/models/${r.model.id}`, text: r.model.name })),
    keys.map((k) => el("td", { text: typeof r.metrics[k] === "number" ? `${number(r.metrics[k])} · ${norm(k, r.metrics[k])}` : "" })))));
  if (!latest.length) table.querySelector("tbody").replaceChildren(el("tr", {}, el("td", { text: "No model has been evaluated yet." })));
}

document.getElementById("lb-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  ratings().catch((err) => setStatus(err.message, true));
});
await me;
await Promise.all([ratings(), evaluations()]);
