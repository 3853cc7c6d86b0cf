// A form generated from a JSON schema (the AgentConfig of GET /openapi.json). Scalars get
// inputs, fixed objects nest as fieldsets, anything open-ended (provider blocks, lists, maps)
// gets a small JSON box. Unset fields stay absent so the server's defaults apply.
import { field, h, uid } from "./dom.js";

const FIRST = ["name", "prompt", "greeting", "speaks_first", "language", "stt", "llm", "tts", "voice"];
const LONG_TEXT = new Set(["prompt", "greeting", "apology", "failure_goodbye", "brief"]);
const NAMES = { vad: "VAD", stt: "STT (speech to text)", llm: "LLM", tts: "TTS (text to speech)",
  dtmf_inter_digit_ms: "DTMF inter-digit ms", post_call: "Post-call", webhook_url: "Webhook URL" };

// A field's name from its key ("max_wait_ms" -> "Max wait ms"): the schema's titles are
// generated ("Max Wait Ms") or name a referenced type ("ProviderBlock").
function nameOf(key) {
  if (NAMES[key]) return NAMES[key];
  const text = key.replace(/_/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function resolve(schema, defs) {
  let out = schema || {};
  if (out.$ref) out = { ...defs[out.$ref.split("/").pop()], ...out, $ref: undefined };
  if (out.allOf && out.allOf.length === 1) out = { ...resolve(out.allOf[0], defs), ...out, allOf: undefined };
  if (out.anyOf) {
    const real = out.anyOf.filter((x) => x.type !== "null");
    if (real.length === 1) out = { ...resolve(real[0], defs), ...out, anyOf: undefined, nullable: true };
  }
  return out;
}

function isFixedObject(schema) {
  return schema.type === "object" && schema.properties && schema.additionalProperties !== true;
}

function hintFor(schema) {
  const parts = [];
  if (schema.description) parts.push(schema.description);
  if (schema.default !== undefined && typeof schema.default !== "object") parts.push(`Default: ${JSON.stringify(schema.default)}`);
  if (schema.minimum !== undefined) parts.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) parts.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) parts.push(`≤ ${schema.maximum}`);
  return parts.join(" · ");
}

export function schemaForm(root, defs, value, onChange) {
  const container = h("div", { class: "schema-form" });
  container.append(...objectFields(resolve(root, defs), defs, value, onChange, ""));
  return container;
}

function objectFields(schema, defs, obj, onChange, prefix) {
  const props = Object.entries(schema.properties || {});
  props.sort(([a], [b]) => rank(a) - rank(b));
  const required = new Set(schema.required || []);
  return props.map(([key, raw]) => {
    const prop = resolve(raw, defs);
    const name = nameOf(key);
    const label = `${name}${required.has(key) ? " (required)" : ""}`;
    const set = (v) => {
      if (v === undefined) delete obj[key]; else obj[key] = v;
      onChange();
    };
    if (isFixedObject(prop)) {
      const child = obj[key] && typeof obj[key] === "object" ? obj[key] : {};
      const inner = objectFields(prop, defs, child, () => {
        if (Object.keys(child).length) obj[key] = child; else delete obj[key];
        onChange();
      }, `${prefix}${key}.`);
      return h("details", { open: obj[key] !== undefined ? true : null },
        h("summary", {}, name),
        h("fieldset", {}, h("legend", { class: "sr-only" }, name), inner));
    }
    return scalarField(key, prop, obj[key], set, label, `${prefix}${key}`, required.has(key));
  });
}

function rank(key) {
  const i = FIRST.indexOf(key);
  return i === -1 ? FIRST.length : i;
}

function scalarField(key, prop, current, set, label, path, isRequired) {
  const hint = hintFor(prop);
  const id = uid(`cfg-${path.replace(/[^a-z0-9]/gi, "-")}`);
  if (prop.enum) {
    const select = h("select", { id, name: path },
      h("option", { value: "" }, "(default)"),
      prop.enum.map((v) => h("option", { value: String(v), selected: v === current ? true : null }, String(v))));
    select.addEventListener("change", () => set(select.value === "" ? undefined : select.value));
    return field(label, select, hint);
  }
  if (prop.type === "boolean") {
    const box = h("input", { id, type: "checkbox", name: path, checked: current ?? prop.default ?? false });
    box.addEventListener("change", () => set(box.checked));
    const wrap = field(label, box, hint);
    wrap.classList.add("inline");
    return wrap;
  }
  if (prop.type === "string") {
    const long = LONG_TEXT.has(key);
    const attrs = { id, name: path, required: isRequired ? true : null,
      placeholder: typeof prop.default === "string" ? prop.default : null,
      maxlength: prop.maxLength ?? null };
    const input = long ? h("textarea", { ...attrs, rows: key === "prompt" ? 6 : 2 }) : h("input", { ...attrs, type: "text" });
    input.value = current ?? "";
    input.addEventListener("input", () => {
      if (input.value === "") set(prop.nullable && current === null ? null : undefined);
      else set(input.value);
    });
    return field(label, input, hint);
  }
  if (prop.type === "integer" || prop.type === "number") {
    const input = h("input", { id, name: path, type: "number", inputmode: "decimal",
      step: prop.type === "integer" ? "1" : "any",
      min: prop.minimum ?? null, max: prop.maximum ?? null,
      placeholder: prop.default !== undefined ? String(prop.default) : null });
    input.value = current ?? "";
    input.addEventListener("input", () => {
      if (input.value === "") set(undefined);
      else if (!Number.isNaN(input.valueAsNumber)) set(input.valueAsNumber);
    });
    return field(label, input, hint);
  }
  // Open-ended: a provider block, a list or a map, edited as JSON.
  const box = h("textarea", { id, name: path, rows: 3, spellcheck: "false" });
  box.value = current === undefined ? "" : JSON.stringify(current, null, 2);
  const problem = h("span", { class: "hint error", role: "alert" });
  box.addEventListener("input", () => {
    if (box.value.trim() === "") { problem.textContent = ""; set(undefined); return; }
    try {
      set(JSON.parse(box.value));
      problem.textContent = "";
    } catch {
      problem.textContent = "Not valid JSON yet.";
    }
  });
  const wrap = field(`${label} (JSON)`, box, hint || prop.description);
  wrap.append(problem);
  return wrap;
}
