// Sessions: the call history with filters, and one call in detail (transcript with what the
// caller heard, tool calls, per-turn latency waterfalls, its events).
import { api, auth, query, wsUrl } from "./api.js";
import { field, fmtDuration, fmtTime, h, table } from "./dom.js";
import { transcriptLine } from "./transcript.js";
import { waterfall } from "./waterfall.js";

const STATUSES = ["", "ringing", "active", "ended", "failed", "interrupted"];

export async function renderList(main) {
  const agents = await api("GET", "/v1/agents");
  const names = new Map(agents.items.map((a) => [a.id, a.name]));
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const agent = h("select", { name: "agent_id" }, h("option", { value: "" }, "All agents"),
    agents.items.map((a) => h("option", { value: a.id }, a.name)));
  const status = h("select", { name: "status" }, STATUSES.map((x) => h("option", { value: x }, x || "Any status")));
  const since = h("input", { type: "date", name: "from" });
  const until = h("input", { type: "date", name: "to" });
  agent.value = params.get("agent_id") || "";
  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older sessions");
  let cursor = null;
  const load = async (append) => {
    const q = { agent_id: agent.value, status: status.value, limit: 50, cursor: append ? cursor : "" };
    // The API's window is `from` (inclusive) to `to` (exclusive), so the last picked day runs
    // to the next local midnight.
    if (since.value) q.from = new Date(`${since.value}T00:00:00`).toISOString();
    if (until.value) {
      const end = new Date(`${until.value}T00:00:00`);
      end.setDate(end.getDate() + 1);
      q.to = end.toISOString();
    }
    const page = await api("GET", `/v1/sessions${query(q)}`);
    if (!append) body.replaceChildren();
    for (const x of page.items) {
      body.append(h("tr", {},
        h("td", {}, h("a", { href: `#/sessions/${encodeURIComponent(x.id)}` }, fmtTime(x.created_at))),
        h("td", {}, names.get(x.agent_id) || x.agent_id || ""),
        h("td", {}, `${x.from_number} → ${x.to_number}`, x.metadata && x.metadata.playground ? h("span", { class: "badge" }, "playground") : null),
        h("td", {}, x.status),
        h("td", {}, x.end_reason || ""),
        h("td", {}, fmtDuration(x.duration_s))));
    }
    if (!body.childElementCount) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No sessions match.")));
    cursor = page.next_cursor;
    more.hidden = !cursor;
  };
  const form = h("form", { class: "row" }, field("Agent", agent), field("Status", status), field("From", since), field("Until", until),
    h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (e) => { e.preventDefault(); load(false); });
  more.addEventListener("click", () => load(true));
  main.append(h("h1", {}, "Sessions"), form,
    h("table", {}, h("caption", { class: "sr-only" }, "Sessions, newest first"),
      h("thead", {}, h("tr", {}, ["Started", "Agent", "From → to", "Status", "End reason", "Duration"].map((t) => h("th", { scope: "col" }, t)))),
      body),
    more);
  await load(false);
}

const ms = (a, b) => (a && b ? new Date(b).getTime() - new Date(a).getTime() : null);

// The caller's speech ends at 0; the agent's answer is heard from its first audio out until
// the turn ended (its row's start can be an earlier line, e.g. a greeting it cut into).
export function turnSpans(user, assistant) {
  if (!user || !user.ended_at) return {};
  const firstAudio = assistant && assistant.latency ? assistant.latency.first_audio_out_ms : null;
  return {
    caller: { from: ms(user.ended_at, user.started_at), to: 0 },
    agent: assistant && typeof firstAudio === "number"
      ? { from: firstAudio, to: ms(user.ended_at, assistant.ended_at), interrupted: assistant.interrupted }
      : undefined,
  };
}

export async function renderDetail(main, sessionId) {
  const x = await api("GET", `/v1/sessions/${encodeURIComponent(sessionId)}`);
  const turns = [...x.turns].sort((a, b) => a.idx - b.idx);
  const info = [["Agent", x.agent_id ? h("a", { href: `#/agents/${encodeURIComponent(x.agent_id)}` }, `${x.agent_id} v${x.agent_version}`) : ""],
    ["Direction", x.direction], ["From → to", `${x.from_number} → ${x.to_number}`], ["Status", x.status],
    ["End reason", x.end_reason || ""], ["Started", fmtTime(x.created_at)], ["Duration", fmtDuration(x.duration_s)]];
  const waterfalls = [];
  turns.forEach((t, i) => {
    if (!t.latency) return;
    const user = t.role === "assistant" && turns[i - 1] && turns[i - 1].role === "user" ? turns[i - 1] : (t.role === "user" ? t : null);
    waterfalls.push(h("section", { class: "panel" },
      h("h3", {}, `Turn ${waterfalls.length + 1}: “${(user ? user.text : t.text).slice(0, 80)}”`),
      waterfall(t.latency, turnSpans(user, t.role === "assistant" ? t : null), `Turn ${waterfalls.length + 1} latency`)));
  });
  const events = h("ul", { class: "events", tabindex: "0", "aria-label": "Events of this call" });
  const eventsState = h("p", { class: "muted" }, "Loading the events kept in memory…");
  main.append(
    h("h1", {}, `Session ${x.id}`),
    h("dl", { class: "panel" }, info.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h2", {}, "Transcript"),
    turns.length ? h("ul", { class: "transcript", "aria-label": "Transcript" }, turns.filter((t) => t.role === "user" || t.role === "assistant")
      .map((t) => transcriptLine(t.role, t.text, { heard: t.heard_text, interrupted: t.interrupted })))
      : h("p", { class: "muted" }, "No turns recorded."),
    h("h2", {}, "Latency per turn"),
    ...(waterfalls.length ? waterfalls : [h("p", { class: "muted" }, "No latency recorded.")]),
    h("h2", {}, "Tool calls"),
    table(["Tool", "Arguments", "Status", "Result / error", "Latency"], x.tool_calls.map((c) => h("tr", {},
      h("td", {}, c.name), h("td", {}, h("code", {}, JSON.stringify(c.arguments))), h("td", {}, c.status),
      h("td", {}, c.error || JSON.stringify(c.result ?? null)), h("td", {}, c.latency_ms == null ? "" : `${Math.round(c.latency_ms)} ms`))), "Tool calls"),
    h("h2", {}, "Usage"),
    table(["Kind", "Provider", "Model", "Metric", "Quantity"], x.usage.map((u) => h("tr", {},
      h("td", {}, u.kind), h("td", {}, u.provider), h("td", {}, u.model), h("td", {}, u.metric), h("td", {}, String(Math.round(u.quantity * 100) / 100)))), "Usage"),
    h("h2", {}, "Events"), eventsState, events,
  );
  const ws = new WebSocket(wsUrl(`/v1/sessions/${encodeURIComponent(sessionId)}/events?${new URLSearchParams({ api_key: auth.key })}`));
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    if (msg.type === "stream.subscribed") { eventsState.textContent = x.status === "active" ? "Live: new events appear as they happen." : ""; return; }
    events.append(h("li", {}, `#${msg.seq} ${new Date(msg.ts * 1000).toLocaleTimeString()} `, h("strong", {}, msg.type), ` ${JSON.stringify(msg.data)}`));
  };
  ws.onclose = () => {
    if (!events.childElementCount) eventsState.textContent = "This replica no longer keeps this call's events in memory (turns, tool calls and usage above are stored).";
  };
  return () => ws.close();
}
