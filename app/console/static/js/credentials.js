// Credentials: set or delete provider secrets by name. Values go to the server once and are
// never shown again (the API never returns them).
import { api } from "./api.js";
import { announce, field, fmtTime, h, table } from "./dom.js";

export async function render(main) {
  const { items } = await api("GET", "/v1/credentials");
  const name = h("input", { type: "text", name: "credential_name", required: true, pattern: "[A-Za-z0-9_.\\-]{1,100}", placeholder: "deepgram" });
  const value = h("input", { type: "password", name: "credential_value", required: true, autocomplete: "new-password" });
  const problem = h("p", { class: "problems", role: "alert" });
  const form = h("form", { class: "panel", "aria-labelledby": "set-title" },
    h("h2", { id: "set-title" }, "Set a credential"),
    h("div", { class: "row" }, field("Name", name), field("Secret value", value, "Stored encrypted; it is never shown again."),
      h("button", { type: "submit" }, "Save credential")),
    problem);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    problem.textContent = "";
    const secret = value.value;
    value.value = "";
    try {
      await api("PUT", `/v1/credentials/${encodeURIComponent(name.value.trim())}`, { value: secret });
      announce(`Credential ${name.value.trim()} saved.`);
      main.replaceChildren();
      await render(main);
    } catch (err) {
      problem.textContent = err.message;
    }
  });
  const remove = async (n) => {
    try {
      await api("DELETE", `/v1/credentials/${encodeURIComponent(n)}`);
      announce(`Credential ${n} deleted.`);
      main.replaceChildren();
      await render(main);
    } catch (err) {
      announce(err.message, true);
    }
  };
  main.append(h("h1", {}, "Credentials"), form, h("h2", {}, "Stored credentials"),
    table(["Name", "Value", "Updated", "Actions"], items.map((c) => h("tr", {},
      h("td", {}, h("code", {}, c.name)),
      h("td", { class: "muted" }, "hidden"),
      h("td", {}, fmtTime(c.updated_at)),
      h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `Delete ${c.name}`, onclick: () => remove(c.name) }, "Delete")),
    )), "Stored credentials"));
}
