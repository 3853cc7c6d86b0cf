// Agents: the list, and one editor for create and edit (form and raw JSON side by side,
// validation, versions with a diff).
import { api } from "./api.js";
import { diffLines, mergePatch } from "./diff.js";
import { announce, field, fmtTime, h, table } from "./dom.js";
import { schemaForm } from "./schemaform.js";

// A new agent starts on the embedded stack, which answers without any API key.
const TEMPLATE = {
  name: "",
  prompt: "",
  greeting: "Hello! How can I help you today?",
  stt: { provider: "whisper" },
  llm: { provider: "llama_cpp", max_tokens: 60, max_sentences: 2, stop: ["\n"] },
  tts: { provider: "piper" },
};

let specCache = null;
async function agentSchema() {
  if (!specCache) {
    const res = await fetch("/openapi.json");
    if (!res.ok) throw new Error(`GET /openapi.json: HTTP ${res.status}`);
    specCache = await res.json();
  }
  const defs = specCache.components.schemas;
  return { root: defs.AgentConfig, defs };
}

export async function renderList(main) {
  const { items } = await api("GET", "/v1/agents");
  main.append(
    h("h1", {}, "Agents"),
    h("p", {}, h("a", { class: "button", href: "#/agents/new" }, "New agent")),
    table(["Name", "Id", "Version", "Providers", "Updated", "Actions"], items.map((a) => h("tr", {},
      h("td", {}, h("a", { href: `#/agents/${encodeURIComponent(a.id)}` }, a.name)),
      h("td", {}, h("code", {}, a.id)),
      h("td", {}, String(a.version)),
      h("td", {}, ["stt", "llm", "tts"].map((k) => `${k}: ${a.config[k]?.provider ?? "?"}`).join(", ")),
      h("td", {}, fmtTime(a.updated_at)),
      h("td", {}, h("a", { href: `#/playground/${encodeURIComponent(a.id)}` }, `Talk to ${a.name}`)),
    )), "Agents"),
  );
}

export async function renderEditor(main, agentId) {
  const { root, defs } = await agentSchema();
  const agent = agentId ? await api("GET", `/v1/agents/${encodeURIComponent(agentId)}`) : null;
  const config = structuredClone(agent ? agent.config : TEMPLATE);

  const raw = h("textarea", { rows: 30, spellcheck: "false", name: "raw_json" });
  const rawProblem = h("p", { class: "problems", role: "alert" });
  const results = h("div", { "aria-live": "polite" });
  const formHolder = h("div", {});

  const syncRaw = () => { raw.value = JSON.stringify(config, null, 2); };
  const drawForm = () => {
    formHolder.replaceChildren(schemaForm(root, defs, config, syncRaw));
  };
  raw.addEventListener("change", () => {
    try {
      const parsed = JSON.parse(raw.value);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not an object");
      for (const k of Object.keys(config)) delete config[k];
      Object.assign(config, parsed);
      rawProblem.textContent = "";
      drawForm();
    } catch (err) {
      rawProblem.textContent = `The JSON is not a valid config object (${err.message}); the form keeps the last valid one.`;
    }
  });

  const showProblems = (title, problems) => {
    results.replaceChildren(h("h2", {}, title), problems.length
      ? h("ul", { class: "problems" }, problems.map((p) => h("li", {}, `${p.field}: ${p.message}`)))
      : h("p", { class: "ok" }, "No problems found."));
  };

  const validate = async () => {
    try {
      const res = agent
        ? await api("POST", `/v1/agents/${encodeURIComponent(agent.id)}/validate`, mergePatch(agent.config, config))
        : await api("POST", "/v1/agents/validate", config);
      showProblems(res.valid ? "Valid" : "Problems", res.problems);
    } catch (err) {
      showProblems("Could not validate", [{ field: "config", message: err.message }]);
    }
  };

  const save = async () => {
    try {
      if (agent) {
        const updated = await api("PATCH", `/v1/agents/${encodeURIComponent(agent.id)}`, mergePatch(agent.config, config));
        announce(updated.version === agent.version ? "Nothing changed." : `Saved as version ${updated.version}.`);
        await rerender(main, agent.id);
      } else {
        const created = await api("POST", "/v1/agents", config);
        announce(`Created agent ${created.name}.`);
        location.hash = `#/agents/${encodeURIComponent(created.id)}`;
      }
    } catch (err) {
      showProblems("Not saved", err.errors && err.errors.length ? err.errors : [{ field: "config", message: err.message }]);
    }
  };

  syncRaw();
  drawForm();
  const title = agent ? `Agent ${agent.name}` : "New agent";
  main.append(
    h("h1", {}, title),
    agent ? h("p", { class: "muted" }, `Id ${agent.id} · version ${agent.version} · updated ${fmtTime(agent.updated_at)} · `,
      h("a", { href: `#/playground/${encodeURIComponent(agent.id)}` }, "Talk to it in the playground")) : null,
    h("div", { class: "row" },
      h("button", { type: "button", onclick: save }, agent ? "Save new version" : "Create agent"),
      h("button", { type: "button", class: "secondary", onclick: validate }, "Validate")),
    results,
    h("div", { class: "split" },
      h("section", { class: "panel", "aria-labelledby": "form-title" }, h("h2", { id: "form-title" }, "Form"), formHolder),
      h("section", { class: "panel sticky", "aria-labelledby": "raw-title" }, h("h2", { id: "raw-title" }, "Raw JSON"),
        field("Agent config (JSON)", raw, "Edits apply to the form when you leave this box."), rawProblem)),
  );
  if (agent) main.append(await versionsSection(agent));
}

async function rerender(main, agentId) {
  main.replaceChildren();
  await renderEditor(main, agentId);
}

async function versionsSection(agent) {
  const { items } = await api("GET", `/v1/agents/${encodeURIComponent(agent.id)}/versions`);
  const byVersion = new Map(items.map((v) => [v.version, v]));
  const options = (selected) => items.map((v) => h("option", { value: String(v.version), selected: v.version === selected ? true : null },
    `v${v.version} · ${fmtTime(v.created_at)}`));
  const latest = items.length ? items[items.length - 1].version : 1;
  const from = h("select", { name: "diff_from" }, options(Math.max(1, latest - 1)));
  const to = h("select", { name: "diff_to" }, options(latest));
  const out = h("div", { class: "diff", role: "region", "aria-label": "Differences between the versions", tabindex: "0" });
  const draw = () => {
    const a = JSON.stringify(byVersion.get(Number(from.value))?.config ?? {}, null, 2);
    const b = JSON.stringify(byVersion.get(Number(to.value))?.config ?? {}, null, 2);
    const lines = diffLines(a, b);
    const changed = lines.filter(([k]) => k !== "same").length;
    out.replaceChildren(changed ? "" : h("span", { class: "same" }, "No differences."),
      ...lines.filter(([k], i) => k !== "same" || near(lines, i)).map(([kind, text]) =>
        h("span", { class: kind }, `${kind === "add" ? "+ " : kind === "del" ? "- " : "  "}${text}`)));
  };
  from.addEventListener("change", draw);
  to.addEventListener("change", draw);
  draw();
  return h("section", { "aria-labelledby": "versions-title" },
    h("h2", { id: "versions-title" }, `Versions (${items.length})`),
    h("div", { class: "row" }, field("Compare version", from), field("with version", to)),
    out);
}

// Unchanged lines are shown only next to a change (two lines of context).
function near(lines, i) {
  for (let d = -2; d <= 2; d += 1) {
    const l = lines[i + d];
    if (l && l[0] !== "same") return true;
  }
  return false;
}
