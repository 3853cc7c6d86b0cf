"""Alembic environment and revisions: the only way the schema changes.

Run through `phonebooth migrate` (or `app.db.migrate`); the ini file lives next to this module so
the command works from any directory.
"""
