"""The bench's anchors and counters: sshd's public `-R` port, its CPU, callgrind's counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import instructions
from bench.load import Sink, bulk
from bench.report import Results
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
    own = cpu_seconds(me)  # read first: this process keeps running between the two reads
    assert tree_cpu_seconds(me) >= own > 0


def test_callgrind_dump_is_read_by_its_trigger(tmp_path: Path) -> None:
    """The instruction count comes from the dump made for that transfer, not another one."""
    for n, (trigger, total) in enumerate((("a.0", 100), ("b.0", 250)), start=1):
        (tmp_path / f"callgrind.42.{n}").write_text(
            f"version: 1\ndesc: Trigger: dump {trigger}\nsummary: {total}\ntotals: {total}\n"
        )
    assert instructions._dumped(tmp_path, 42, "b.0") == 250
    with pytest.raises(RuntimeError, match="no callgrind dump"):
        instructions._dumped(tmp_path, 42, "c.0")


def test_instruction_ratio_judges_the_three_percent_goal() -> None:
    """Metering on/off instructions per byte: 1.02 meets the 3 % goal, 1.05 does not."""
    res = Results(quick=True, argv=["bench"])
    for kind, on in (("public", 20.4), ("ssh", 31.5)):
        res.figure(f"{kind}.relay.instr", "3", "on", "instr/byte").samples.append(on)
        res.figure(f"{kind}.relay_nometer.instr", "3", "off", "instr/byte").samples.append(
            20.0 if kind == "public" else 30.0
        )
    instructions.judge(res)
    assert [t.met for t in res.targets] == [True, False]
