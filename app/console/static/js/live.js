// Live calls on this replica: duration, agent state, last line; say / hang up / transfer.
import { api } from "./api.js";
import { announce, field, fmtDuration, h, table } from "./dom.js";

export async function render(main) {
  const holder = h("div", {});
  const say = h("input", { type: "text", name: "say_text", placeholder: "Text the agent speaks now" });
  const target = h("input", { type: "text", name: "transfer_target", placeholder: "+14155550100 or sip:agent@example.com" });
  main.append(h("h1", {}, "Live calls"),
    h("div", { class: "panel" },
      h("p", { class: "muted" }, "Actions apply to the call whose button you press."),
      h("div", { class: "row" }, field("Text to say", say), field("Transfer target", target))),
    holder);
  const act = async (sid, action, body) => {
    try {
      await api("POST", `/v1/sessions/${encodeURIComponent(sid)}/${action}`, body);
      announce(`${action} sent to ${sid}.`);
    } catch (err) {
      announce(`${action} failed: ${err.message}`, true);
    }
  };
  const draw = async () => {
    let items;
    try {
      ({ items } = await api("GET", "/v1/live-calls"));
    } catch (err) {
      holder.replaceChildren(h("p", { class: "error" }, err.message));
      return;
    }
    holder.replaceChildren(table(["Session", "Agent", "From → to", "Duration", "State", "Last line", "Actions"],
      items.map((c) => h("tr", {},
        h("td", {}, h("a", { href: `#/sessions/${encodeURIComponent(c.session_id)}` }, c.session_id), c.playground ? h("span", { class: "badge" }, "playground") : null),
        h("td", {}, c.agent_id || ""),
        h("td", {}, `${c.from_number} → ${c.to_number}`),
        h("td", {}, fmtDuration(c.duration_s)),
        h("td", {}, c.state),
        h("td", {}, c.last_line ? `${c.last_line.role}: ${c.last_line.text}` : ""),
        h("td", {},
          h("button", { type: "button", class: "secondary", "aria-label": `Say the text on ${c.session_id}`,
            onclick: () => (say.value.trim() ? act(c.session_id, "say", { text: say.value.trim() }) : announce("Type what to say first.", true)) }, "Say"), " ",
          h("button", { type: "button", class: "secondary", "aria-label": `Transfer ${c.session_id}`,
            onclick: () => (target.value.trim() ? act(c.session_id, "transfer", { target: target.value.trim() }) : announce("Type a transfer target first.", true)) }, "Transfer"), " ",
          h("button", { type: "button", class: "danger", "aria-label": `Hang up ${c.session_id}`, onclick: () => act(c.session_id, "hangup", {}) }, "Hang up")),
      )), "Live calls"));
  };
  await draw();
  const timer = setInterval(draw, 2000);
  return () => clearInterval(timer);
}
