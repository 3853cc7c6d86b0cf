"""The engine side of speech-to-speech calls: one model session instead of STT → LLM → TTS."""
