import { apiKey, signIn } from "./console.js";

const form = document.getElementById("signin");
const error = document.getElementById("signin-error");

function next() {
  const wanted = new URLSearchParams(location.search).get("next") || "/console/";
  return wanted.startsWith("/console/") ? wanted : "/console/"; // never off this site
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = document.getElementById("key").value.trim();
  error.textContent = "";
  const response = await fetch("/console/api/whoami", { headers: { Authorization: `Bearer ${key}` } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch { /* keep the status text */ }
    error.textContent = `Not signed in: ${detail}`;
    return;
  }
  signIn(key);
  location.assign(next());
});

if (apiKey()) document.getElementById("key").placeholder = "signed in; another key replaces it";
document.getElementById("key").focus();
