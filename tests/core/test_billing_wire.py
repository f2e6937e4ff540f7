"""Wire messages parse strictly and name the offending field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core import wire


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seq": 1, "items": [], "more": 1}, "unknown field(s) 'more'"),
        ({"seq": True, "items": []}, "seq: expected an integer, got bool"),
        ({"seq": -1, "items": []}, "seq: -1 is out of range"),
        ({"seq": 2**62 + 1, "items": []}, "seq:"),
        ({"seq": 1.0, "items": []}, "seq: expected an integer, got float"),
        ({"items": []}, "seq: missing"),
        ({"seq": 1, "items": [{"agent_id": "a", "bytes": "5"}]}, "items[0].bytes"),
        ({"seq": 1, "items": [{"agent_id": "a", "x": 1}]}, "items[0]: unknown field(s) 'x'"),
        ({"seq": 1, "items": {}}, "items: expected a list"),
        ("x", "body: expected a JSON object"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(data: Any, message: str) -> None:
    """Unknown fields, bools, negatives, floats, huge or missing values name their path."""
    with pytest.raises(wire.WireError) as info:
        wire.parse(wire.UsageReport, data)
    assert message in str(info.value)


def test_signed_and_choice_fields() -> None:
    """Signed fields take negatives; choice fields take only their values."""
    assert wire.parse(wire.CorrectionRequest, {"amount": -5, "reason": "r"}).amount == -5
    with pytest.raises(wire.WireError, match="role: 'boss' is not one of"):
        wire.parse(wire.RegisterAgentRequest, {"name": "n", "role": "boss", "public_keys": []})


@given(
    seq=st.integers(0, 2**62),
    items=st.lists(
        st.builds(
            dict,
            agent_id=st.text(max_size=20),
            bytes=st.integers(0, 2**62),
            tunnel_seconds=st.integers(0, 2**62),
        ),
        max_size=5,
    ),
)
def test_dump_of_parse_is_identity(seq: int, items: list[dict[str, Any]]) -> None:
    """A valid message with all fields round-trips unchanged."""
    data = {"seq": seq, "items": items}
    assert wire.dump(wire.parse(wire.UsageReport, data)) == data
