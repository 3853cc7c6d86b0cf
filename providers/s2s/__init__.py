"""Speech-to-speech adapters: one model hears the caller and speaks back, replacing the
STT → LLM → TTS chain. `base` holds the contract; each vendor module speaks its WebSocket."""
