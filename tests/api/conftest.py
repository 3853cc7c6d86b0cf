"""API tests: the test providers are registered for every test here."""

from __future__ import annotations

from tests.api.providers import register_test_providers

register_test_providers()
