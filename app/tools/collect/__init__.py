"""Collect tools: builtins that take over the conversation to get one value from the caller
(e-mail, phone, name, date of birth, address, card), each a small parser in its own module run
by the shared dialogue in `dialogue.py`."""

from __future__ import annotations

from app.tools.collect import address, card, dob, email, name, phone
from app.tools.collect.dialogue import CollectKind, CollectOptions, run_collect

KINDS: dict[str, CollectKind] = {k.name: k for k in (
    email.KIND, address.KIND, phone.KIND, name.KIND, dob.KIND, card.KIND)}

__all__ = ["KINDS", "CollectKind", "CollectOptions", "run_collect"]
