"""The vendors' examples and type catalogues `check` works from agree with each other."""

from __future__ import annotations

import pytest

from feedhook.samples import known_types, sample_envelopes


@pytest.mark.parametrize("kind", ["sequence", "movida", "teamhub", "modulo"])
def test_every_example_event_is_of_a_catalogued_type(kind: str) -> None:
    types = known_types(kind)
    examples = sample_envelopes("src", kind, "https://x/api")
    assert examples and types
    assert {e.type for e in examples} <= types
