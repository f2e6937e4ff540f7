"""The bench's OpenSSH anchors: sshd's public `-R` port moves bytes, and its CPU is all counted."""

from __future__ import annotations

import os
from pathlib import Path

from bench.load import Sink, bulk
from bench.stats import cpu_seconds, tree_cpu_seconds
from tests.rigs.contenders import SshdRig, listening
from tests.rigs.procs import Procs


def test_sshd_gateway_port_forwards_every_byte_and_counts_session_cpu(tmp_path: Path) -> None:
    """GatewayPorts yes: an `ssh -R` port carries a bulk run; session processes do the work."""
    sink = Sink()
    procs = Procs(tmp_path)
    try:
        rig = SshdRig(procs, "sshd_public", gateway_ports=True).start()
        assert "GatewayPorts yes" in (rig.dir / "sshd_config").read_text()
        _client, port = rig.public(sink.port)
        assert listening(port, any_address=True)
        assert f"00000000:{port:04X}" in Path("/proc/net/tcp").read_text()  # bound to all
        before = tree_cpu_seconds(rig.pid), cpu_seconds(rig.pid)
        assert bulk(port, 2, 8 * 2**20, sink, timeout=60) > 0  # the sink checks every byte count
        tree = tree_cpu_seconds(rig.pid) - before[0]
        listener = cpu_seconds(rig.pid) - before[1]
        assert tree > listener * 10 + 0.001  # the session's processes did the work
    finally:
        procs.close()
        sink.close()


def test_tree_cpu_counts_descendants() -> None:
    """A process tree's CPU is at least its root's own."""
    me = os.getpid()
    assert tree_cpu_seconds(me) >= cpu_seconds(me) > 0
