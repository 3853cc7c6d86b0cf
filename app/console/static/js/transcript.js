// One transcript line; an interrupted agent line shows what the caller heard and, struck
// through, what was cut off.
import { h } from "./dom.js";

export function transcriptLine(role, text, { heard = null, interrupted = false, interim = false } = {}) {
  const who = role === "user" ? "Caller" : role === "assistant" ? "Agent" : role;
  const li = h("li", { class: `${role}${interim ? " interim" : ""}` }, h("span", { class: "who" }, `${who}:`));
  if (role === "assistant" && interrupted) {
    const said = text || "";
    const heardText = heard ?? "";
    if (heardText && said.startsWith(heardText)) {
      li.append(heardText, h("span", { class: "unheard", title: "not heard" }, said.slice(heardText.length)));
    } else {
      li.append(heardText || "(nothing heard)");
      if (said && said !== heardText) li.append(" ", h("span", { class: "unheard" }, said));
    }
    li.append(h("span", { class: "badge" }, "interrupted"));
  } else {
    li.append(text);
  }
  return li;
}
