"""Wire messages parse strictly and name the offending field."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.contract import wire
from quota.core.billing import AgentRole, PlanKind


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
        wire.parse(wire.SyncRequest, data)
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
            agent_id=st.text(st.characters(exclude_characters="\x00"), max_size=20),
            tunnel_id=st.text(st.characters(exclude_characters="\x00"), max_size=20),
            bytes=st.integers(0, 2**62),
            tunnel_seconds=st.integers(0, 2**62),
        ),
        max_size=5,
    ),
)
def test_dump_of_parse_is_identity(seq: int, items: list[dict[str, Any]]) -> None:
    """A valid message with all fields round-trips unchanged."""
    data = {"seq": seq, "items": items, "leases": []}
    assert wire.dump(wire.parse(wire.SyncRequest, data)) == data


def test_roles_and_kinds_decode_to_the_domain_enums() -> None:
    """A role or kind on the wire is the domain's enum member, not a copy of its text."""
    req = wire.parse(wire.RegisterAgentRequest, {"name": "n", "role": "dual", "public_keys": []})
    assert req.role is AgentRole.DUAL and req.role.may_connect
    plan = wire.parse(
        wire.PlanInfo,
        {"name": "p", "kind": "tunnel_time", "price": 1, "period_ms": 1, "traffic": 0},
    )
    assert plan.kind is PlanKind.TUNNEL_TIME
    assert wire.dump(req) == {"name": "n", "role": "dual", "public_keys": []}


def test_every_unknown_field_and_the_full_path_are_named() -> None:
    """All unknown fields of the object are listed; nested errors carry the whole path."""
    with pytest.raises(wire.WireError, match=r"^body: unknown field\(s\) 'a', 'b'$"):
        wire.parse(wire.SyncRequest, {"seq": 1, "items": [], "b": 1, "a": 2})
    bad = {"seq": 1, "leases": [{"agent_id": "a"}, {"agent_id": "b", "want": -3}]}
    with pytest.raises(wire.WireError, match=r"^leases\[1\]\.want: -3 is out of range"):
        wire.parse(wire.SyncRequest, bad)
    with pytest.raises(wire.WireError, match=r"^items\[0\]\.agent_id: missing$"):
        wire.parse(wire.SyncRequest, {"seq": 1, "items": [{}]})
