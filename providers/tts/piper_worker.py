"""The Piper worker process: one voice, driven over a pipe by the server
(`python -m providers.tts.piper_worker FD`; the protocol is `providers.native.worker`'s).

Piper is native code (espeak-ng phonemisation, onnxruntime) wrapped in Python that holds the GIL
while it phonemises and post-processes each sentence: run in the server it stalled every call's
audio for tens of ms per sentence, and a fault in it would take down every call. Here it costs
the one utterance being rendered.

Load options: `voice` (the .onnx path; its .onnx.json beside it) and `threads` (onnxruntime
intra-op threads). A job holds `text`, `scales` (noise, length, noise_w), `speaker_id` (None:
single-speaker voice), `volume` and `skip` (sentences already delivered by a worker that died:
not rendered again); each item is one sentence of int16 samples at the voice's rate, normalised
to full scale times `volume` (empty for a silent sentence, so that sentences can be counted).
Between sentences the worker looks for a cancel, so a barge-in stops rendering after the
sentence in flight.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from providers.native.worker import Job, main


class PiperEngine:
    def __init__(self) -> None:
        self.voice: Any = None

    def load(self, options: dict[str, Any]) -> dict[str, Any]:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        path = Path(options["voice"])
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = int(options["threads"])
        opts.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        with Path(f"{path}.json").open(encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        self.voice = PiperVoice(config=config, session=session)
        return {"sample_rate": int(config.sample_rate)}

    def run(self, job: Job) -> dict[str, Any]:
        voice = self.voice
        data = job.data
        own = voice.config  # the voice's settings stand in for the job's None
        noise, length, noise_w = data["scales"]
        scales = np.array([own.noise_scale if noise is None else noise,
                           own.length_scale if length is None else length,
                           own.noise_w_scale if noise_w is None else noise_w], dtype=np.float32)
        sid = None
        if voice.config.num_speakers > 1:
            sid = np.array([data.get("speaker_id") or 0], dtype=np.int64)
        volume = float(data["volume"])
        skip = int(data.get("skip", 0))
        sentences = 0
        for phonemes in voice.phonemize(data["text"]):  # one list per sentence
            if job.cancelled():
                return {"sentences": sentences, "cancelled": True}
            if not phonemes:
                continue
            if skip:
                skip -= 1
                continue
            ids = voice.phonemes_to_ids(phonemes)
            args = {
                "input": np.asarray([ids], dtype=np.int64),
                "input_lengths": np.asarray([len(ids)], dtype=np.int64),
                "scales": scales,
            }
            if sid is not None:
                args["sid"] = sid
            audio = voice.session.run(None, args)[0].squeeze()
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak < 1e-8:
                scaled = np.zeros(0, dtype=np.int16)
            else:
                scaled = np.clip(audio * (volume * 32767.0 / peak), -32768, 32767)
            if not job.emit(scaled.astype(np.int16)):
                return {"sentences": sentences, "cancelled": True}
            sentences += 1
        return {"sentences": sentences, "cancelled": False}


if __name__ == "__main__":
    sys.exit(main(sys.argv, PiperEngine()))
