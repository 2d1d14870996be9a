"""Hypothesis profiles. The default is the thorough one (Hypothesis' own 100 examples and each
test's own ``max_examples``): ``make test`` runs it. ``make unit`` passes
``--hypothesis-profile=unit`` and tries a third of the examples, to stay under a minute; the
examples a thorough run found failing are replayed first either way (.hypothesis/)."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("unit", max_examples=34)


def examples(thorough: int) -> int:
    """How many examples a test that asks for ``thorough`` of them tries under the loaded
    profile: all of them by default, proportionally fewer (at least 10) under ``unit``.

    Decorators run when the test module is imported, after pytest loaded the profile."""
    return max(10, thorough * settings.default.max_examples // 100)
