"""The relay's collector reads the hub at scrape time; a figure the hub lacks is left out."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import generate_latest

from quota.metrics import MetricsConfig
from relay.admin.metrics import RelayCollector, relay_registry
from relay.config import load_config
from relay.hub.hub import Hub
from relay.registry import Registry


def _scrape(hub: Hub) -> str:
    return generate_latest(relay_registry(RelayCollector(hub, None, MetricsConfig()))).decode()


def test_preauth_figures_appear_once_the_hub_keeps_them() -> None:
    """Without `hub.preauth` no pre-auth metric is exported; with it, its values are."""
    hub = Hub(load_config(None), Registry(None), None)
    assert "preauth" not in _scrape(hub)
    hub.preauth = SimpleNamespace(connections=3, drops=5)  # type: ignore[attr-defined]
    text = _scrape(hub)
    assert "quotarelay_relay_preauth_connections 3.0" in text
    assert "quotarelay_relay_preauth_drops_total 5.0" in text


def test_an_idle_relay_exports_zeros_and_no_sync_figures() -> None:
    """A relay with no traffic and no billing link: zero streams, no sync families."""
    text = _scrape(Hub(load_config(None), Registry(None), None))
    assert 'quotarelay_relay_streams{state="open"} 0.0' in text
    assert 'quotarelay_relay_pauses_total{reason="quota"} 0.0' in text
    assert "quotarelay_relay_sync_round_seconds" not in text
    assert "process_open_fds" in text
