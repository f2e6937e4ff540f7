"""Public port choice: in range, sticky per agent, around ports held outside the relay."""

import pytest

from relay.errors import Refused
from relay.hub.tunnels import TunnelTable
from relay.registry import Agent, Role

A = Agent(agent_id="a", account="acme", role=Role.CLIENT, keys=frozenset())
B = Agent(agent_id="b", account="acme", role=Role.CLIENT, keys=frozenset())


def test_port_zero_skips_ports_that_failed_to_bind_and_stays_sticky() -> None:
    """A port something else holds is skipped; an agent gets its last port back."""
    table = TunnelTable(range(100, 104))
    assert table.pick_port(A, 0, avoid={100, 101}) == 102
    table.add_public(A, 102, "", None)
    assert table.pick_port(B, 0) == 100  # not A's remembered port
    table.remove(table.public[102])
    assert table.pick_port(A, 0) == 102


def test_ports_by_number_must_be_in_range_and_free() -> None:
    """Out of range or taken: refused with the reason."""
    table = TunnelTable(range(100, 102))
    with pytest.raises(Refused, match="outside this relay's range 100-101"):
        table.pick_port(A, 99)
    table.add_public(A, 100, "", None)
    with pytest.raises(Refused, match="already in use"):
        table.pick_port(B, 100)
    table.add_public(B, 101, "", None)
    with pytest.raises(Refused, match="no free public port"):
        table.pick_port(B, 0)
