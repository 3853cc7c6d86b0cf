// A live tail of every event on this replica (WS /v1/events).
import { auth, wsUrl } from "./api.js";
import { field, h } from "./dom.js";

const KEEP = 300;

export function render(main) {
  const types = h("input", { type: "text", name: "types", placeholder: "e.g. session.*,turn.metrics" });
  const state = h("p", { class: "muted", role: "status" }, "Connecting…");
  const list = h("ul", { class: "events", "aria-label": "Events, newest first", tabindex: "0" });
  const pause = h("button", { type: "button", class: "secondary", "aria-pressed": "false" }, "Pause");
  let paused = false;
  let ws = null;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
  });
  const connect = () => {
    if (ws) ws.close();
    const q = new URLSearchParams({ api_key: auth.key });
    if (types.value.trim()) q.set("types", types.value.trim());
    ws = new WebSocket(wsUrl(`/v1/events?${q}`));
    ws.onopen = () => { state.textContent = "Connected; waiting for events."; };
    ws.onclose = (e) => { state.textContent = `Disconnected (${e.code}${e.reason ? `: ${e.reason}` : ""}).`; };
    ws.onmessage = (e) => {
      if (paused) return;
      const msg = JSON.parse(e.data);
      if (msg.type === "stream.subscribed") return;
      const when = new Date(msg.ts * 1000).toLocaleTimeString();
      list.prepend(h("li", {}, `${when} `, h("strong", {}, msg.type), " ",
        msg.session_id ? h("a", { href: `#/sessions/${encodeURIComponent(msg.session_id)}` }, msg.session_id) : "",
        ` ${JSON.stringify(msg.data)}`));
      while (list.childElementCount > KEEP) list.lastElementChild.remove();
    };
  };
  const form = h("form", { class: "row" }, field("Event types", types, "Comma-separated, * wildcards; empty for all."),
    h("button", { type: "submit" }, "Apply filter"), pause);
  form.addEventListener("submit", (e) => { e.preventDefault(); list.replaceChildren(); connect(); });
  main.append(h("h1", {}, "Events"), form, state, list);
  connect();
  return () => { if (ws) ws.close(); };
}
