// Rating campaigns: the next blinded pair of the chosen campaign for this key; a verdict is
// stored as a rating (and so reaches the leaderboard).
import { api, el, me, setStatus } from "./console.js";

const select = document.getElementById("campaign");
const section = document.getElementById("pair");
const done = document.getElementById("done");
const progress = document.getElementById("progress");
let pair = null;

function showProgress(p) {
  progress.textContent = `${p.yours} rated by you, ${p.left_for_you} left for you; ${p.ratings} ratings in all`;
}

async function next() {
  const campaign = select.value;
  if (!campaign) return;
  const got = await api(`/api/v1/ratings/campaigns/${campaign}/next`);
  showProgress(got.progress);
  pair = got.pair;
  section.hidden = !pair;
  done.hidden = Boolean(pair);
  if (!pair) return;
  section.dataset.pairId = pair.id;
  document.getElementById("pair-prompt").textContent = pair.prompt;
  document.getElementById("left").textContent = pair.left;
  document.getElementById("right").textContent = pair.right;
}

for (const button of section.querySelectorAll("[data-verdict]")) {
  button.addEventListener("click", async () => {
    const verdict = button.dataset.verdict;
    try {
      const got = await api(`/api/v1/ratings/campaigns/${select.value}/ratings`,
        { method: "POST", body: { pair_id: pair.id, verdict } });
      setStatus(`Recorded: ${verdict} (rating ${got.rating}).`);
      await next();
    } catch (e) {
      setStatus(`Not recorded: ${e.message}`, true);
    }
  });
}
select.addEventListener("change", () => next().catch((e) => setStatus(e.message, true)));

await me;
const campaigns = (await api("/api/v1/ratings/campaigns?limit=200")).data.filter((c) => c.state !== "failed");
select.replaceChildren(...campaigns.map((c) => el("option", { value: c.id,
  text: `${c.name ?? c.id} (${c.state}, ${c.prompts} prompts, ${c.models.length} models)` })));
if (!campaigns.length) setStatus("No rating campaign yet: create one with POST /api/v1/ratings/campaigns.");
else await next();
