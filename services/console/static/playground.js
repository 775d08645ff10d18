// Completions streamed from a registered model (POST /api/v1/models/{id}/completions with
// stream: true: OpenAI's server-sent events), with the sampling controls and saved templates.
import { api, el, me, setStatus } from "./console.js";

const form = document.getElementById("play");
const model = document.getElementById("model");
const template = document.getElementById("template");
const prompt = document.getElementById("prompt");
const out = document.getElementById("completion");
const finish = document.getElementById("finish");
const stop = document.getElementById("stop");
let templates = [];
let controller = null;
const vars = el("fieldset", { class: "row", id: "variables", hidden: true });
prompt.after(vars);

function intOrNull(id) {
  const v = document.getElementById(id).value;
  return v === "" || Number(v) === 0 ? null : Number(v);
}

function body() {
  const b = {
    max_tokens: Number(document.getElementById("max_tokens").value),
    temperature: Number(document.getElementById("temperature").value),
    top_p: Number(document.getElementById("top_p").value),
    top_k: intOrNull("top_k"), seed: document.getElementById("seed").value === "" ? null : Number(document.getElementById("seed").value),
    stream: true,
  };
  if (template.value) {
    b.prompt_template = template.value;
    b.variables = Object.fromEntries([...vars.querySelectorAll("input")].map((i) => [i.name, i.value]));
  } else {
    b.prompt = prompt.value;
  }
  return b;
}

function onTemplate() {
  const t = templates.find((x) => x.id === template.value);
  prompt.readOnly = Boolean(t);
  prompt.required = !t;
  if (t) prompt.value = t.template;
  vars.hidden = !t || t.variables.length === 0;
  vars.replaceChildren(el("legend", { text: "Template variables" }), ...(t?.variables ?? []).map((v) =>
    el("div", {}, el("label", { for: `var-${v}`, text: v }),
      el("input", { id: `var-${v}`, name: v, value: t.defaults?.[v] ?? "" }))));
}

// Reads an SSE body, calling onEvent(data) for each "data:" line until [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  controller = new AbortController();
  out.textContent = "";
  finish.textContent = "";
  stop.disabled = false;
  document.getElementById("generate").disabled = true;
  setStatus("Generating…");
  let chunks = 0;
  try {
    const response = await api(`/api/v1/models/${encodeURIComponent(model.value)}/completions`,
      { method: "POST", body: body(), raw: true, signal: controller.signal });
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message ?? JSON.stringify(chunk.error));
      for (const choice of chunk.choices ?? []) {
        out.textContent += choice.text ?? "";
        chunks += 1;
        out.dataset.chunks = String(chunks);
        if (choice.finish_reason) finish.textContent = `Finished: ${choice.finish_reason}.`;
      }
    });
    setStatus(`Done: ${chunks} chunks streamed.`);
  } catch (e) {
    setStatus(e.name === "AbortError" ? "Stopped." : `Not completed: ${e.message}`, e.name !== "AbortError");
  } finally {
    stop.disabled = true;
    document.getElementById("generate").disabled = false;
  }
});
stop.addEventListener("click", () => controller?.abort());
template.addEventListener("change", onTemplate);

await me;
const models = (await api("/api/v1/models?limit=1000")).data;
model.replaceChildren(...models.map((m) => el("option", { value: m.id, text: `${m.name} (${m.id}, ${m.kind})` })));
templates = (await api("/api/v1/prompts")).data;
template.append(...templates.map((t) => el("option", { value: t.id, text: `${t.name} v${t.version}` })));
setStatus(models.length ? "" : "No model is registered yet.");
