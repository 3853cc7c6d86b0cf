// The per-turn latency waterfall, in ms from the moment the caller stopped speaking (VAD stop).
//
// Stages come from turn.metrics: end of turn, STT final, LLM first token, TTS first byte, first
// audio out, first played ack, each drawn from when it began to when it ended (`*_at_ms`).
// `spans` adds the caller's speech (before 0) and the agent's speech (after the first audio).
import { fmtMs, h, s } from "./dom.js";

export function stages(latency) {
  const L = latency || {};
  const num = (v) => (typeof v === "number" ? v : null);
  const eou = num(L.vad_stop_to_eou_ms);
  const sttWait = num(L.eou_to_stt_final_ms);
  const final = num(L.stt_final_at_ms) ?? (eou !== null && sttWait !== null ? eou + sttWait : null);
  const ttft = num(L.llm_ttft_ms);
  const fa = num(L.first_audio_out_ms);
  const ttfb = num(L.tts_ttfb_ms);
  // Exact stage times where the engine reports them; older records only have durations, and
  // then the LLM bar starts at the STT final and the TTS bar ends at the first audio out.
  const llmFrom = num(L.llm_request_at_ms) ?? final;
  const llmTo = num(L.llm_first_token_at_ms) ?? (llmFrom !== null && ttft !== null ? llmFrom + ttft : null);
  const ttsTo = num(L.tts_first_byte_at_ms) ?? fa;
  const ttsFrom = num(L.tts_request_at_ms) ?? (ttsTo !== null && ttfb !== null ? ttsTo - ttfb : null);
  return [
    { name: "VAD stop → end of turn", from: 0, to: eou, value: eou },
    { name: "STT final", from: eou !== null && final !== null ? Math.min(eou, final) : eou, to: final, value: sttWait },
    { name: "LLM first token", from: llmFrom, to: llmTo, value: ttft },
    { name: "TTS first byte", from: ttsFrom, to: ttsTo, value: ttfb },
    { name: "First audio out", from: 0, to: fa, value: fa, marker: true },
    { name: "First audio played", from: 0, to: num(L.played_ack_ms), value: num(L.played_ack_ms), marker: true },
  ];
}

export function waterfall(latency, spans = {}, title = "Turn latency") {
  const rows = [];
  if (spans.caller && spans.caller.from !== null) {
    rows.push({ name: "Caller speech", from: spans.caller.from, to: spans.caller.to ?? 0, value: (spans.caller.to ?? 0) - spans.caller.from, cls: "bar-caller" });
  }
  for (const st of stages(latency)) rows.push({ ...st, cls: "bar-stage" });
  if (spans.agent && spans.agent.from !== null && spans.agent.to !== null) {
    rows.push({ name: spans.agent.interrupted ? "Agent speech (interrupted)" : "Agent speech", from: spans.agent.from, to: spans.agent.to, value: spans.agent.to - spans.agent.from, cls: "bar-agent" });
  }
  const known = rows.filter((r) => r.from !== null && r.to !== null);
  const lo = Math.min(0, ...known.map((r) => r.from));
  const hi = Math.max(100, ...known.map((r) => r.to));
  const W = 760;
  const labelW = 190;
  const valueW = 70;
  const rowH = 22;
  const top = 18;
  const H = top + rows.length * rowH + 8;
  const x = (ms) => labelW + ((ms - lo) / (hi - lo)) * (W - labelW - valueW);
  const summary = `${title}: ${rows.map((r) => `${r.name} ${fmtMs(r.value)}`).join(", ")}`;
  const ticks = niceTicks(lo, hi);
  const svg = s("svg", { class: "waterfall", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary },
    s("title", {}, summary),
    ticks.map((t) => [
      s("line", { class: "axis", x1: x(t), y1: top - 4, x2: x(t), y2: H - 6 }),
      s("text", { x: x(t), y: 11, "text-anchor": "middle" }, `${t} ms`),
    ]),
    s("line", { class: "zero", x1: x(0), y1: top - 4, x2: x(0), y2: H - 6 }),
    rows.map((r, i) => {
      const y = top + i * rowH;
      const parts = [s("text", { x: 4, y: y + 14 }, r.name)];
      if (r.from !== null && r.to !== null) {
        const x0 = x(Math.min(r.from, r.to));
        const width = Math.max(2, Math.abs(x(r.to) - x(r.from)));
        parts.push(r.marker
          ? s("rect", { class: r.cls, x: x(r.to) - 1.5, y: y + 3, width: 3, height: rowH - 6 })
          : s("rect", { class: r.cls, x: x0, y: y + 4, width, height: rowH - 8, rx: 2 }));
        parts.push(s("text", { x: W - 4, y: y + 14, "text-anchor": "end" }, fmtMs(r.value)));
      } else {
        parts.push(s("text", { x: W - 4, y: y + 14, "text-anchor": "end" }, "–"));
      }
      return s("g", {}, parts);
    }));
  return h("figure", { class: "waterfall-figure" }, svg,
    h("figcaption", { class: "muted" }, `${title}. 0 is the end of the caller's speech; bars run from each stage's request to its first result.`));
}

function niceTicks(lo, hi) {
  const span = hi - lo;
  const steps = [50, 100, 200, 250, 500, 1000, 2000, 5000, 10000];
  const step = steps.find((st) => span / st <= 8) || 20000;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi; t += step) out.push(t);
  return out;
}
