import { api, el, me, setStatus, when } from "./console.js";

function row(plural, a) {
  return el("tr", { "data-artifact-id": a.id },
    el("td", {}, el("a", { href: `/console/${plural}/${a.id}`, text: `${a.name} (${a.id})` })),
    el("td", { text: a.kind }),
    el("td", {}, a.job_id ? el("a", { href: `/console/jobs/${a.job_id}`, text: a.job_id }) : "by hand"),
    el("td", { text: a.parent_id ?? "" }),
    el("td", { text: a.team ?? "" }),
    el("td", { text: when(a.created_at) }),
  );
}

await me;
for (const plural of ["models", "datasets"]) {
  const found = await api(`/api/v1/${plural}?limit=500`);
  document.querySelector(`#${plural} tbody`).replaceChildren(...found.data.map((a) => row(plural, a)));
}
setStatus("");
