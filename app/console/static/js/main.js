// Hash routing: #/agents, #/agents/ID, #/sessions/ID ... Each page module exports
// `render(main, params)` and may return a cleanup function (closing sockets, timers).
import { api, ApiError, auth } from "./api.js";
import { announce, field, h } from "./dom.js";
import * as agents from "./agents.js";
import * as credentials from "./credentials.js";
import * as events from "./events.js";
import * as live from "./live.js";
import * as numbers from "./numbers.js";
import * as playground from "./playground.js";
import * as sessions from "./sessions.js";
import * as usage from "./usage.js";

const ROUTES = [
  [/^#\/agents\/new$/, agents.renderEditor, "New agent"],
  [/^#\/agents\/([^/]+)$/, agents.renderEditor, "Agent"],
  [/^#\/agents$/, agents.renderList, "Agents"],
  [/^#\/playground(?:\/([^/]+))?$/, playground.render, "Playground"],
  [/^#\/numbers$/, numbers.render, "Numbers"],
  [/^#\/credentials$/, credentials.render, "Credentials"],
  [/^#\/live$/, live.render, "Live calls"],
  [/^#\/sessions\/([^/]+)$/, sessions.renderDetail, "Session"],
  [/^#\/sessions$/, sessions.renderList, "Sessions"],
  [/^#\/usage$/, usage.render, "Usage"],
  [/^#\/events$/, events.render, "Events"],
];

let cleanup = null;
let firstRoute = true;

function renderLogin(main) {
  const input = h("input", { type: "password", name: "api_key", autocomplete: "off",
    required: true, spellcheck: "false" });
  const problem = h("p", { class: "problems", role: "alert" });
  const form = h("form", { class: "panel", "aria-labelledby": "login-title" },
    field("API key", input, "A key from `phonebooth keys create` or the admin key. Kept in this tab only."),
    problem,
    h("button", { type: "submit" }, "Log in"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    problem.textContent = "";
    const key = input.value.trim();
    try {
      await api("GET", "/v1/agents?limit=1", undefined, key);
      auth.set(key);
      input.value = "";
      if (location.hash === "#/agents") route(); else location.hash = "#/agents";
    } catch (err) {
      problem.textContent = err instanceof ApiError && err.status === 401
        ? "That key was not accepted." : `Could not log in: ${err.message}`;
    }
  });
  main.append(h("h1", { id: "login-title" }, "Log in"), form);
  input.focus();
}

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* page already gone */ } cleanup = null; }
  const main = document.getElementById("main");
  main.replaceChildren();
  const loggedIn = Boolean(auth.key);
  document.getElementById("nav").hidden = !loggedIn;
  document.getElementById("logout").hidden = !loggedIn;
  const hash = location.hash || "#/agents";
  if (!loggedIn) {
    document.title = "Log in · Phonebooth console";
    renderLogin(main);
    return;
  }
  for (const a of document.querySelectorAll("#nav a")) {
    const here = hash === a.getAttribute("href") || hash.startsWith(`${a.getAttribute("href")}/`);
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  for (const [pattern, page, title] of ROUTES) {
    const m = hash.match(pattern);
    if (!m) continue;
    document.title = `${title} · Phonebooth console`;
    try {
      cleanup = (await page(main, ...m.slice(1).map((x) => (x ? decodeURIComponent(x) : x)))) || null;
    } catch (err) {
      main.append(h("p", { class: "error", role: "alert" }, `Could not load this page: ${err.message}`));
    }
    // After navigating, start reading at the new page (not on the first load: the skip link
    // and the navigation come first there).
    if (!firstRoute) main.focus();
    firstRoute = false;
    return;
  }
  location.hash = "#/agents";
}

window.addEventListener("hashchange", route);
// The skip link must not change the hash (that is the router's): it only moves focus.
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("pb-logged-out", () => { announce("Logged out: the key was refused.", true); route(); });
document.getElementById("logout").addEventListener("click", () => {
  auth.clear();
  location.hash = "#/login";
  route();
});
route();
