// Shared by every page: the signed-in key (this tab's sessionStorage only), API calls with it,
// who the key is, and which controls its role may see. The server checks every call anyway.
const KEY = "llmforge.key";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function signIn(key) {
  sessionStorage.setItem(KEY, key);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  location.assign("/console/signin");
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorOf(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch {
    /* not JSON: keep the status text */
  }
  return new ApiError(response.status, `${response.status}: ${detail}`);
}

// fetch() with the key; JSON in and out; a non-2xx answer throws ApiError with the API's detail.
export async function api(path, { method = "GET", body, raw = false, signal } = {}) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    location.assign(`/console/signin?next=${encodeURIComponent(location.pathname)}`);
    throw await errorOf(response);
  }
  if (!response.ok) throw await errorOf(response);
  return raw ? response : response.json();
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setStatus(message, isError = false) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.classList.toggle("error", isError);
}

export function when(iso) {
  return iso ? new Date(iso.endsWith("Z") ? iso : `${iso}Z`).toLocaleString() : "";
}

export function seconds(from, to) {
  if (!from) return "";
  const end = to ? Date.parse(to.endsWith("Z") ? to : `${to}Z`) : Date.now();
  const s = Math.max(0, Math.round((end - Date.parse(from.endsWith("Z") ? from : `${from}Z`)) / 1000));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

export function number(value, digits = 4) {
  if (value === null || value === undefined || value === "") return "";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? value.toLocaleString() : value.toPrecision(digits);
}

export function factList(dl, facts) {
  dl.replaceChildren(
    ...facts.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]),
  );
}

// Poll fn every ms while the tab is visible; stop when fn returns false.
export function every(ms, fn) {
  let timer = null;
  const tick = async () => {
    let again = true;
    try {
      if (!document.hidden) again = (await fn()) !== false;
    } catch (e) {
      setStatus(e.message, true);
    }
    if (again) timer = setTimeout(tick, ms);
  };
  tick();
  return () => clearTimeout(timer);
}

let dashboard = null;

// A job's Ray dashboard link, pointed at the dashboard's external URL where one is configured.
export function dashboardLink(url) {
  if (!url || !dashboard?.external || !url.startsWith(dashboard.url)) return url;
  return dashboard.external.replace(/\/$/, "") + url.slice(dashboard.url.replace(/\/$/, "").length);
}

function showFor(me) {
  dashboard = me.ray_dashboard ?? null;
  const writer = me.role !== "read_only";
  for (const node of document.querySelectorAll("[data-writer-only]")) node.hidden = !writer;
  for (const node of document.querySelectorAll("[data-admin-only]")) node.hidden = me.role !== "admin";
  const who = document.getElementById("who");
  const out = el("button", { type: "button", class: "link", onclick: signOut, text: "Sign out" });
  who.replaceChildren(
    el("span", { text: me.auth ? `${me.role} · team ${me.team}` : "keys off (local)" }),
    me.auth ? out : "",
  );
  document.body.dataset.role = me.role;
}

async function whoami() {
  const onSignIn = location.pathname === "/console/signin";
  if (!apiKey()) {
    const open = await fetch("/console/api/whoami", { headers: headers() });
    if (open.ok) return open.json(); // a control plane without keys (auth off)
    if (!onSignIn) location.assign(`/console/signin?next=${encodeURIComponent(location.pathname)}`);
    return null;
  }
  return api("/console/api/whoami");
}

// Resolves to the signed-in key's {role, team, key_id, auth} once the page may load its data.
export const me = whoami().then((who) => {
  if (who) showFor(who);
  return who;
});
