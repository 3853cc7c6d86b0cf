"""Plivo's side of a phone call, played against a Phonebooth server: the far end.

`far_end` speaks the carrier's protocol (signed answer request, the audio stream, paced
playout with checkpoint acks); `phonebooth call` (`command`), the tests and the load bench all
drive calls through it. It is a client of the server: nothing in the server imports it.
"""
