"""JSON Schemas of the client messages the speech-to-speech fakes accept, written from the
vendors' published references (OpenAI Realtime client events, GA and beta; Gemini Live
`BidiGenerateContentClientMessage`). A message that does not match is answered the way the
vendor answers it (OpenAI: an `error` event; Gemini: close 1007) and recorded as a violation."""

from __future__ import annotations

from typing import Any

import jsonschema

_B64 = {"type": "string", "pattern": r"^[A-Za-z0-9+/]*={0,2}$"}
_FN_TOOL = {
    "type": "object", "required": ["type", "name", "parameters"],
    "properties": {"type": {"const": "function"}, "name": {"type": "string"},
                   "description": {"type": "string"},
                   "parameters": {"type": "object", "required": ["type"]}},
    "additionalProperties": False,
}
_PCM24 = {"type": "object", "required": ["type"], "additionalProperties": False,
          "properties": {"type": {"enum": ["audio/pcm", "audio/pcmu", "audio/pcma"]},
                         "rate": {"const": 24000}}}
_VAD = {"oneOf": [{"type": "null"}, {"type": "object", "required": ["type"],
                                     "properties": {"type": {"enum": ["server_vad",
                                                                      "semantic_vad"]}}}]}

_GA_SESSION = {
    "type": "object", "required": ["type"], "additionalProperties": False,
    "properties": {
        "type": {"const": "realtime"}, "model": {"type": "string"},
        "instructions": {"type": "string"},
        "output_modalities": {"type": "array", "items": {"enum": ["audio", "text"]},
                              "maxItems": 1},
        "audio": {"type": "object", "additionalProperties": False, "properties": {
            "input": {"type": "object", "additionalProperties": False, "properties": {
                "format": _PCM24, "turn_detection": _VAD,
                "noise_reduction": {"type": ["object", "null"]},
                "transcription": {"type": ["object", "null"],
                                  "properties": {"model": {"type": "string"}}}}},
            "output": {"type": "object", "additionalProperties": False, "properties": {
                "format": _PCM24, "voice": {"type": "string"},
                "speed": {"type": "number"}}}}},
        "tools": {"type": "array", "items": _FN_TOOL},
        "tool_choice": {"type": "string"},
        "max_output_tokens": {},
    },
}
_BETA_SESSION = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "modalities": {"type": "array", "items": {"enum": ["audio", "text"]}},
        "instructions": {"type": "string"}, "voice": {"type": "string"},
        "input_audio_format": {"enum": ["pcm16", "g711_ulaw", "g711_alaw"]},
        "output_audio_format": {"enum": ["pcm16", "g711_ulaw", "g711_alaw"]},
        "input_audio_transcription": {"type": ["object", "null"]},
        "turn_detection": _VAD, "tools": {"type": "array", "items": _FN_TOOL},
        "tool_choice": {"type": "string"}, "temperature": {"type": "number", "minimum": 0.6,
                                                           "maximum": 1.2},
    },
}


def _event(name: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "required": ["type", *required], "additionalProperties": False,
            "properties": {"type": {"const": name}, "event_id": {"type": "string"}, **props}}


def _message(*, ga: bool) -> dict[str, Any]:
    """A message item the client adds: an assistant's text is `output_text` content in GA and
    `text` in the beta protocol; a user's or system's is `input_text`."""
    assistant_text = "output_text" if ga else "text"
    return {
        "type": "object", "required": ["type", "role", "content"],
        "properties": {
            "type": {"const": "message"}, "id": {"type": "string"},
            "role": {"enum": ["user", "assistant", "system"]},
            "status": {"enum": ["completed", "incomplete", "in_progress"]},
            "content": {"type": "array", "items": {
                "type": "object", "required": ["type"],
                "properties": {"type": {"enum": [assistant_text, "input_text", "input_audio",
                                                 "output_audio" if ga else "audio"]},
                               "text": {"type": "string"}}}}},
        "if": {"properties": {"role": {"const": "assistant"}}},
        "then": {"properties": {"content": {"items": {"properties": {
            "type": {"enum": [assistant_text, "output_audio" if ga else "audio"]}}}}}},
    }


def openai_client_events(*, ga: bool) -> dict[str, dict[str, Any]]:
    return {
        "session.update": _event("session.update",
                                 {"session": _GA_SESSION if ga else _BETA_SESSION}, ["session"]),
        "input_audio_buffer.append": _event("input_audio_buffer.append", {"audio": _B64},
                                            ["audio"]),
        "input_audio_buffer.commit": _event("input_audio_buffer.commit", {}, []),
        "response.create": _event("response.create", {"response": {"type": "object"}}, []),
        "response.cancel": _event("response.cancel", {"response_id": {"type": "string"}}, []),
        "conversation.item.truncate": _event(
            "conversation.item.truncate",
            {"item_id": {"type": "string"}, "content_index": {"const": 0},
             "audio_end_ms": {"type": "integer", "minimum": 0}},
            ["item_id", "content_index", "audio_end_ms"]),
        "conversation.item.create": _event("conversation.item.create", {"item": {
            "type": "object", "required": ["type"], "oneOf": [
                {"properties": {"type": {"const": "function_call_output"},
                                "call_id": {"type": "string"}, "output": {"type": "string"}},
                 "required": ["call_id", "output"]},
                _message(ga=ga)]},
            "previous_item_id": {"type": ["string", "null"]}}, ["item"]),
        "conversation.item.delete": _event("conversation.item.delete",
                                           {"item_id": {"type": "string"}}, ["item_id"]),
    }


_PART = {"type": "object", "properties": {"text": {"type": "string"}}}
_EMPTY = {"type": "object", "maxProperties": 0}  # ActivityStart / ActivityEnd have no fields
_REALTIME_INPUT_CONFIG = {
    "type": "object", "additionalProperties": False, "properties": {
        "automaticActivityDetection": {
            "type": "object", "additionalProperties": False, "properties": {
                "disabled": {"type": "boolean"},
                "startOfSpeechSensitivity": {"enum": ["START_SENSITIVITY_UNSPECIFIED",
                                                     "START_SENSITIVITY_HIGH",
                                                     "START_SENSITIVITY_LOW"]},
                "endOfSpeechSensitivity": {"enum": ["END_SENSITIVITY_UNSPECIFIED",
                                                   "END_SENSITIVITY_HIGH",
                                                   "END_SENSITIVITY_LOW"]},
                "prefixPaddingMs": {"type": "integer"},
                "silenceDurationMs": {"type": "integer"}}},
        "activityHandling": {"enum": ["ACTIVITY_HANDLING_UNSPECIFIED",
                                      "START_OF_ACTIVITY_INTERRUPTS", "NO_INTERRUPTION"]},
        "turnCoverage": {"enum": ["TURN_COVERAGE_UNSPECIFIED", "TURN_INCLUDES_ONLY_ACTIVITY",
                                  "TURN_INCLUDES_ALL_INPUT"]}}}
GEMINI_CLIENT = {
    "type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
    "properties": {
        "setup": {"type": "object", "required": ["model"], "additionalProperties": False,
                  "properties": {
                      "model": {"type": "string", "pattern": "^models/"},
                      "generationConfig": {"type": "object", "properties": {
                          "responseModalities": {"type": "array",
                                                 "items": {"enum": ["AUDIO", "TEXT"]}},
                          "speechConfig": {"type": "object"},
                          "temperature": {"type": "number"}}},
                      "systemInstruction": {"type": "object", "required": ["parts"],
                                            "properties": {"parts": {"type": "array",
                                                                     "items": _PART}}},
                      "tools": {"type": "array", "items": {"type": "object", "properties": {
                          "functionDeclarations": {"type": "array", "items": {
                              "type": "object", "required": ["name"]}}}}},
                      "realtimeInputConfig": _REALTIME_INPUT_CONFIG,
                      "inputAudioTranscription": {"type": "object"},
                      "outputAudioTranscription": {"type": "object"},
                      "sessionResumption": {"type": "object"},
                      "contextWindowCompression": {"type": "object"}}},
        "realtimeInput": {"type": "object", "additionalProperties": False, "properties": {
            "audio": {"type": "object", "required": ["data", "mimeType"],
                      "properties": {"data": _B64,
                                     "mimeType": {"pattern": r"^audio/pcm;rate=\d+$"}}},
            "text": {"type": "string"}, "activityStart": _EMPTY, "activityEnd": _EMPTY,
            "audioStreamEnd": {"type": "boolean"}}},
        "clientContent": {"type": "object", "additionalProperties": False, "properties": {
            "turns": {"type": "array", "items": {"type": "object", "required": ["role", "parts"],
                                                 "properties": {"role": {"enum": ["user",
                                                                                  "model"]},
                                                                "parts": {"type": "array"}}}},
            "turnComplete": {"type": "boolean"}}},
        "toolResponse": {"type": "object", "required": ["functionResponses"],
                         "additionalProperties": False, "properties": {
                             "functionResponses": {"type": "array", "items": {
                                 "type": "object", "required": ["id", "name", "response"],
                                 "properties": {"response": {"type": "object"}}}}}},
    },
}


def violation(schema: dict[str, Any], message: Any) -> str | None:
    """The first schema error of `message`, or None when it conforms."""
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema)
                                           .iter_errors(message))
    return None if err is None else f"{'/'.join(map(str, err.path))}: {err.message}"
