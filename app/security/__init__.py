"""Secrets at rest, API keys and the server's own secret key."""
