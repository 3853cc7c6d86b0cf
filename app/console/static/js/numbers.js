// Phone numbers: which agent answers each number.
import { api } from "./api.js";
import { announce, field, fmtTime, h, table } from "./dom.js";

export async function render(main) {
  const [{ items }, agents] = await Promise.all([api("GET", "/v1/numbers"), api("GET", "/v1/agents")]);
  const names = new Map(agents.items.map((a) => [a.id, a.name]));
  const number = h("input", { type: "tel", name: "number", required: true, pattern: "\\+[1-9][0-9]{1,14}", placeholder: "+14155550100" });
  const agent = h("select", { name: "agent_id", required: true },
    agents.items.map((a) => h("option", { value: a.id }, `${a.name} (${a.id})`)));
  const problem = h("p", { class: "problems", role: "alert" });
  const form = h("form", { class: "panel", "aria-labelledby": "map-title" },
    h("h2", { id: "map-title" }, "Map a number"),
    h("div", { class: "row" }, field("Phone number (E.164)", number), field("Agent", agent),
      h("button", { type: "submit" }, "Map number")),
    problem);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    problem.textContent = "";
    try {
      await api("PUT", `/v1/numbers/${encodeURIComponent(number.value.trim())}`, { agent_id: agent.value });
      announce(`${number.value.trim()} now goes to ${names.get(agent.value) || agent.value}.`);
      main.replaceChildren();
      await render(main);
    } catch (err) {
      problem.textContent = err.message;
    }
  });
  const unmap = async (n) => {
    try {
      await api("DELETE", `/v1/numbers/${encodeURIComponent(n)}`);
      announce(`${n} unmapped.`);
      main.replaceChildren();
      await render(main);
    } catch (err) {
      announce(err.message, true);
    }
  };
  main.append(h("h1", {}, "Numbers"), form, h("h2", {}, "Mapped numbers"),
    table(["Number", "Agent", "Updated", "Actions"], items.map((n) => h("tr", {},
      h("td", {}, n.number),
      h("td", {}, h("a", { href: `#/agents/${encodeURIComponent(n.agent_id)}` }, names.get(n.agent_id) || n.agent_id)),
      h("td", {}, fmtTime(n.updated_at)),
      h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Unmap ${n.number}`, onclick: () => unmap(n.number) }, "Unmap")),
    )), "Mapped numbers"));
}
