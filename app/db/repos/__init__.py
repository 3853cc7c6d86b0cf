"""Repositories: one module per aggregate, each a set of async functions over an AsyncSession.

Callers own the transaction (`async with db.transaction() as s: await agents.create(s, ...)`),
so several repository calls can commit atomically.
"""
