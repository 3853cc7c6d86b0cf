// Audio worklets of the playground. `sampleRate` is the AudioContext's rate (a worklet global).
const WIRE_RATE = 16000;
const FRAME = 320; // 20 ms at 16 kHz

// Microphone -> 16 kHz PCM16 frames for the server (box-filter decimation: averaging the input
// samples of each output sample keeps most aliasing out of the speech band).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / WIRE_RATE;
    this.t = 0;
    this.acc = 0;
    this.count = 0;
    this.frame = new Int16Array(FRAME);
    this.n = 0;
    this.energy = 0;
    this.energyN = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i += 1) {
      const x = channel[i];
      this.acc += x;
      this.count += 1;
      this.t += 1;
      this.energy += x * x;
      this.energyN += 1;
      if (this.t >= this.step) {
        this.t -= this.step;
        const v = Math.max(-1, Math.min(1, this.acc / this.count));
        this.acc = 0;
        this.count = 0;
        this.frame[this.n] = v < 0 ? v * 0x8000 : v * 0x7fff;
        this.n += 1;
        if (this.n === FRAME) {
          const level = Math.sqrt(this.energy / Math.max(1, this.energyN));
          this.energy = 0;
          this.energyN = 0;
          this.port.postMessage({ pcm: this.frame.buffer, level }, [this.frame.buffer]);
          this.frame = new Int16Array(FRAME);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

// Agent audio (16 kHz PCM16) -> the speakers, with the server's checkpoints: each mark is
// reported back once everything queued before it has been played, and `clear` drops the queue
// at once (barge-in).
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = [];
    this.current = null;
    this.offset = 0;
    this.last = 0;
    this.port.onmessage = (e) => {
      const m = e.data;
      if (m.type === "audio") this.queue.push({ samples: this.upsample(new Int16Array(m.pcm)) });
      else if (m.type === "mark") this.queue.push({ mark: m.name });
      else if (m.type === "clear") {
        this.queue = [];
        this.current = null;
        this.port.postMessage({ type: "cleared" });
      }
    };
  }

  upsample(pcm) {
    const ratio = sampleRate / WIRE_RATE;
    const out = new Float32Array(Math.round(pcm.length * ratio));
    for (let i = 0; i < out.length; i += 1) {
      const pos = i / ratio;
      const k = Math.floor(pos);
      const frac = pos - k;
      const a = k === 0 ? this.last : pcm[k - 1] / 32768;
      const b = k < pcm.length ? pcm[k] / 32768 : pcm[pcm.length - 1] / 32768;
      out[i] = a + (b - a) * frac;
    }
    if (pcm.length) this.last = pcm[pcm.length - 1] / 32768;
    return out;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length) {
      if (!this.current) {
        const next = this.queue.shift();
        if (!next) break;
        if (next.mark !== undefined) {
          this.port.postMessage({ type: "played", name: next.mark });
          continue;
        }
        this.current = next.samples;
        this.offset = 0;
      }
      const n = Math.min(out.length - i, this.current.length - this.offset);
      out.set(this.current.subarray(this.offset, this.offset + n), i);
      i += n;
      this.offset += n;
      if (this.offset >= this.current.length) this.current = null;
    }
    out.fill(0, i);
    for (let c = 1; c < outputs[0].length; c += 1) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("pb-capture", CaptureProcessor);
registerProcessor("pb-playback", PlaybackProcessor);
