// Admins: API keys (create, revoke) and each team's limit of running jobs.
import { api, el, me, setStatus, when } from "./console.js";

async function keys() {
  const list = await api("/api/v1/keys");
  document.querySelector("#keys tbody").replaceChildren(...list.map((k) => el("tr", { "data-key-id": k.id },
    el("td", {}, el("code", { text: k.id })), el("td", { text: k.name }), el("td", { text: k.role }),
    el("td", { text: k.team }), el("td", { text: when(k.created_at) }), el("td", { text: when(k.expires_at) }),
    el("td", { text: when(k.revoked_at) }),
    el("td", {}, k.revoked_at ? "" : el("button", { type: "button", class: "danger",
      "aria-label": `Revoke key ${k.name} (${k.id})`, text: "Revoke",
      onclick: async () => {
        try {
          await api(`/api/v1/keys/${k.id}`, { method: "DELETE" });
          await keys();
        } catch (e) {
          setStatus(e.message, true);
        }
      } })))));
}

async function teams() {
  const list = await api("/api/v1/teams");
  const table = document.getElementById("teams");
  table.querySelector("thead").replaceChildren(el("tr", {}, ...["Team", "Max running", "Limit from", "Running", "Queued"]
    .map((h) => el("th", { scope: "col", text: h }))));
  table.querySelector("tbody").replaceChildren(...list.map((t) => el("tr", {},
    el("th", { scope: "row", text: t.team }), el("td", { text: t.max_running }), el("td", { text: t.limit_source }),
    el("td", { text: t.running }), el("td", { text: t.queued }))));
}

document.getElementById("new-key").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const made = await api("/api/v1/keys", { method: "POST", body: {
      name: document.getElementById("key-name").value, team: document.getElementById("key-team").value,
      role: document.getElementById("key-role").value } });
    const notice = document.getElementById("new-key-out");
    notice.hidden = false;
    notice.replaceChildren("New key (shown once, copy it now): ", el("code", { id: "new-key-value", text: made.key }));
    await keys();
  } catch (e) {
    setStatus(`Not created: ${e.message}`, true);
  }
});

document.getElementById("limit").addEventListener("submit", async (event) => {
  event.preventDefault();
  const team = document.getElementById("limit-team").value;
  try {
    await api(`/api/v1/teams/${encodeURIComponent(team)}/limit`, { method: "PUT",
      body: { max_running: Number(document.getElementById("limit-max").value) } });
    await teams();
  } catch (e) {
    setStatus(`Not set: ${e.message}`, true);
  }
});

const who = await me;
if (who?.role !== "admin") {
  setStatus("Only admins manage keys and team limits.", true);
} else {
  await Promise.all([keys(), teams()]);
}
