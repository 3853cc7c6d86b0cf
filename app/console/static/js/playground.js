// The playground: talk to an agent from this browser's microphone. The call runs through the
// same call host as a phone call (WS /v1/playground); the page plays the agent's audio,
// reports what it played (so barge-in knows what the caller heard) and draws the transcript
// and each turn's latency from the call's events.
import { api, auth, wsUrl } from "./api.js";
import { field, fmtMs, h } from "./dom.js";
import { transcriptLine } from "./transcript.js";
import { waterfall } from "./waterfall.js";

function b64ToBuffer(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) bytes[i] = bin.charCodeAt(i);
  return bytes.buffer;
}

export async function render(main, agentId) {
  const { items } = await api("GET", "/v1/agents");
  const agent = h("select", { name: "agent_id" }, items.map((a) => h("option", { value: a.id, selected: a.id === agentId ? true : null }, `${a.name} (${a.id})`)));
  const echo = h("input", { type: "checkbox", name: "echo_cancellation", checked: true });
  const echoField = field("Echo cancellation", echo, "Keeps the agent's voice from your speakers out of the microphone; turn it off with headphones (it can muffle you while the agent talks).");
  echoField.classList.add("inline");
  const start = h("button", { type: "button" }, "Start call");
  const stop = h("button", { type: "button", class: "danger", disabled: true }, "Hang up");
  const state = h("p", { role: "status", class: "muted", id: "call-state" }, "Not connected.");
  const meter = h("meter", { class: "meter", min: "0", max: "1", value: "0", id: "mic-level" });
  const transcript = h("ul", { class: "transcript", id: "transcript", "aria-live": "polite", "aria-label": "Live transcript" });
  const latency = h("div", { id: "latency", "aria-live": "polite" });
  const sessionLink = h("p", {});

  let call = null;
  // A keypad for agents that collect digits (sent as the caller's DTMF).
  const keys = h("div", { class: "keypad", role: "group", "aria-label": "Keypad" },
    ["1", "2", "3", "4", "5", "6", "7", "8", "9", "*", "0", "#"].map((d) =>
      h("button", { type: "button", class: "secondary", disabled: true, "aria-label": `Key ${d}`,
        onclick: () => { if (call) call.dtmf(d); } }, d)));
  const setKeys = (on) => { for (const b of keys.querySelectorAll("button")) b.disabled = !on; };

  const hangup = () => { if (call) call.stop("you hung up"); };
  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      call = await startCall(agent.value, { echoCancellation: echo.checked, state, meter, transcript, latency, sessionLink, onEnd: () => {
        call = null;
        start.disabled = false;
        stop.disabled = true;
        agent.disabled = false;
        echo.disabled = false;
        setKeys(false);
      } });
      stop.disabled = false;
      agent.disabled = true;
      echo.disabled = true;
      setKeys(true);
      stop.focus();
    } catch (err) {
      state.textContent = `Could not start: ${err.message}`;
      start.disabled = false;
    }
  });
  stop.addEventListener("click", hangup);

  main.append(h("h1", {}, "Playground"),
    h("p", { class: "muted" }, "Talk to an agent with your microphone. Speak over the agent to interrupt it."),
    h("div", { class: "row" }, field("Agent", agent), start, stop,
      h("div", { class: "field" }, h("label", { for: "mic-level" }, "Microphone level"), meter)),
    echoField, state, sessionLink, keys,
    h("div", { class: "split" },
      h("section", { "aria-labelledby": "tr-title" }, h("h2", { id: "tr-title" }, "Transcript"), transcript),
      h("section", { "aria-labelledby": "lat-title" }, h("h2", { id: "lat-title" }, "Latency per turn"), latency)));
  return hangup;
}

async function startCall(agentId, ui) {
  ui.transcript.replaceChildren();
  ui.latency.replaceChildren();
  ui.sessionLink.replaceChildren();
  ui.state.textContent = "Asking for the microphone…";
  const media = await navigator.mediaDevices.getUserMedia({
    // Echo cancellation keeps the agent's own voice from barging in (the caller may turn it
    // off with headphones); noise suppression and gain control are left to the server's VAD
    // (with them on, speech was clipped and misrecognised).
    audio: { channelCount: 1, echoCancellation: ui.echoCancellation, noiseSuppression: false, autoGainControl: false },
  });
  const ctx = new AudioContext();
  await ctx.audioWorklet.addModule("/console/js/worklets.js");
  const source = ctx.createMediaStreamSource(media);
  const capture = new AudioWorkletNode(ctx, "pb-capture", { numberOfOutputs: 1 });
  const mute = ctx.createGain();
  mute.gain.value = 0; // capture must be pulled by the graph, but the caller must not hear it
  source.connect(capture).connect(mute).connect(ctx.destination);
  const playback = new AudioWorkletNode(ctx, "pb-playback", { numberOfInputs: 0, outputChannelCount: [1] });
  playback.connect(ctx.destination);
  await ctx.resume();

  ui.state.textContent = "Connecting…";
  const ws = new WebSocket(wsUrl("/v1/playground"));
  ws.binaryType = "arraybuffer";
  let live = false;
  let ended = false;
  const send = (obj) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); };

  capture.port.onmessage = (e) => {
    ui.meter.value = Math.min(1, e.data.level * 4);
    if (live && ws.readyState === WebSocket.OPEN) ws.send(e.data.pcm);
  };
  playback.port.onmessage = (e) => {
    if (e.data.type === "played") send({ event: "playedStream", name: e.data.name });
    else if (e.data.type === "cleared") send({ event: "clearedAudio" });
  };

  const view = new CallView(ui);
  const finish = (why) => {
    if (ended) return;
    ended = true;
    live = false;
    ui.state.textContent = `Call ended (${why}).`;
    for (const t of media.getTracks()) t.stop();
    ctx.close();
    ui.onEnd();
  };

  ws.onopen = () => send({ event: "hello", api_key: auth.key, agent_id: agentId });
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    const msg = JSON.parse(e.data);
    switch (msg.event) {
      case "session":
        live = true;
        ui.state.textContent = `In call with ${msg.agent_id} v${msg.agent_version}. Speak now.`;
        ui.sessionLink.replaceChildren("Session ", h("a", { href: `#/sessions/${encodeURIComponent(msg.session_id)}` }, msg.session_id));
        break;
      case "playAudio": {
        const pcm = b64ToBuffer(msg.media.payload);
        playback.port.postMessage({ type: "audio", pcm }, [pcm]);
        break;
      }
      case "checkpoint":
        playback.port.postMessage({ type: "mark", name: msg.name });
        break;
      case "clearAudio":
        playback.port.postMessage({ type: "clear" });
        break;
      case "phonebooth":
        view.onEvent(msg.envelope);
        break;
      case "hangup":
        ui.state.textContent = `The agent is ending the call (${msg.reason}).`;
        break;
      case "ended":
        finish(msg.reason);
        break;
      case "error":
        ui.state.textContent = `Error: ${msg.message}`;
        break;
      default:
        break;
    }
  };
  ws.onclose = (e) => finish(e.reason || `connection closed (${e.code})`);
  ws.onerror = () => { ui.state.textContent = "Connection error."; };

  return {
    dtmf(digit) {
      send({ event: "dtmf", dtmf: { digit } });
    },
    stop(why) {
      send({ event: "stop" });
      live = false;
      ui.state.textContent = `Hanging up (${why})…`;
    },
  };
}

// Turns the call's events into transcript lines and per-turn latency readouts.
class CallView {
  constructor(ui) {
    this.ui = ui;
    this.interim = null;
    this.agentLine = null;
    this.agentText = "";
    this.userStart = null;
    this.userStop = null;
    this.agentStart = null;
    this.agentEnd = null;
    this.turns = 0;
  }

  add(li) {
    this.ui.transcript.append(li);
    this.ui.transcript.scrollTop = this.ui.transcript.scrollHeight;
    return li;
  }

  onEvent(env) {
    const d = env.data || {};
    switch (env.type) {
      case "user.speech_started":
        this.userStart = env.ts;
        break;
      case "user.speech_stopped":
        this.userStop = env.ts;
        break;
      case "user.transcription":
        if (!d.is_final && d.text) {
          if (!this.interim) this.interim = this.add(transcriptLine("user", d.text, { interim: true }));
          else this.interim.lastChild.textContent = d.text;
        }
        break;
      case "user.turn_completed":
        if (this.interim) { this.interim.remove(); this.interim = null; }
        this.add(transcriptLine("user", d.text));
        this.agentLine = null;
        this.agentText = "";
        this.agentStart = null;
        this.agentEnd = null;
        break;
      case "agent.speech_started":
        if (this.agentStart === null) this.agentStart = env.ts;
        this.agentText = `${this.agentText} ${d.text || ""}`.trim();
        if (!this.agentLine) this.agentLine = this.add(transcriptLine("assistant", this.agentText));
        else this.agentLine.replaceWith(this.agentLine = transcriptLine("assistant", this.agentText));
        break;
      case "agent.speech_completed":
        this.agentEnd = env.ts;
        break;
      case "agent.speech_interrupted":
        // Barge-in: show what the caller heard of the line being spoken (the greeting has no
        // turn.completed, so this is the only place its cut is shown).
        this.agentEnd = env.ts;
        if (this.agentLine) {
          const cut = transcriptLine("assistant", this.agentText, { heard: d.heard_text, interrupted: true });
          this.agentLine.replaceWith(cut);
          this.agentLine = cut;
        }
        break;
      case "turn.completed": {
        const line = transcriptLine("assistant", d.agent_text, { heard: d.heard_text, interrupted: d.interrupted });
        if (this.agentLine) this.agentLine.replaceWith(line); else this.add(line);
        this.agentLine = null;
        this.agentText = "";
        this.lastInterrupted = d.interrupted;
        this.lastUserText = d.user_text;
        break;
      }
      case "turn.metrics":
        this.showLatency(d);
        break;
      default:
        break;
    }
  }

  showLatency(latency) {
    this.turns += 1;
    const ms = (t) => (t !== null && this.userStop !== null ? (t - this.userStop) * 1000 : null);
    const spans = {
      caller: this.userStart !== null && this.userStop !== null ? { from: ms(this.userStart), to: 0 } : undefined,
      agent: this.agentStart !== null ? { from: ms(this.agentStart), to: ms(this.agentEnd ?? Date.now() / 1000), interrupted: this.lastInterrupted } : undefined,
    };
    const title = `Turn ${this.turns}`;
    this.ui.latency.prepend(h("section", { class: "panel turn-latency" },
      h("h3", {}, `${title}: “${(this.lastUserText || "").slice(0, 60)}”`),
      h("p", {}, `First audio out ${fmtMs(latency.first_audio_out_ms)} after the end of your speech; server-added ${fmtMs(latency.server_added_ms)}.`),
      waterfall(latency, spans, `${title} latency`)));
  }
}
