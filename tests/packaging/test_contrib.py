"""contrib/ systemd units and the Dockerfile: hardened, and they start real subcommands.

Each file is parsed and checked here; `systemd-analyze verify` and its offline
security score run where systemd-analyze exists, `docker build` where a docker
daemon answers; otherwise those tests skip, saying why.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "UMask": "0077",
}
SUBCOMMANDS = {
    "quotarelay-relay.service": ("relay", "run"),
    "quotarelay-billing.service": ("billing", "serve"),
}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value given (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a key outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _command(argv: list[str]) -> tuple[str, ...]:
    """The subcommand path `argv` selects in the real CLI parser (raises if it is not one)."""
    args = build_parser().parse_args(argv)
    return (args.func.__module__, args.func.__name__)


def test_both_units_exist() -> None:
    """contrib/systemd holds a unit for the relay and one for the billing API."""
    assert {u.name for u in UNITS} == set(SUBCOMMANDS)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened_runs_as_its_own_user_and_starts_a_real_subcommand(unit: Path) -> None:
    """Hardening keys set, an own unprivileged user, ExecStart a real `quotarelay` subcommand."""
    service = parse_unit(unit.read_text())["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == [value], f"{unit.name}: {key}={service.get(key)}"
    assert service["User"] == ["quotarelay"] and service["Group"] == ["quotarelay"]
    assert "AF_PACKET" not in service["RestrictAddressFamilies"][0]
    assert int(service["LimitNOFILE"][0]) >= 16384
    assert "@system-service" in service["SystemCallFilter"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/quotarelay")
    assert tuple(argv[1:3]) == SUBCOMMANDS[unit.name]
    parsed = build_parser().parse_args(argv[1:])
    assert Path(parsed.config).parent == Path("/etc") / service["ConfigurationDirectory"][0]
    state = service["StateDirectory"][0]
    assert service["WorkingDirectory"] == [f"/var/lib/{state}"]
    assert service["StateDirectoryMode"] == ["0700"]


def test_the_relay_unit_allows_the_descriptors_it_needs() -> None:
    """The relay serves many public-port streams: its unit allows 65536 descriptors or more."""
    service = parse_unit((ROOT / "contrib/systemd/quotarelay-relay.service").read_text())["Service"]
    assert int(service["LimitNOFILE"][0]) >= 65536


def test_a_unit_missing_a_key_is_caught() -> None:
    """The checks above can fail: a unit without ProtectSystem parses without it."""
    text = (ROOT / "contrib/systemd/quotarelay-relay.service").read_text()
    broken = parse_unit(text.replace("ProtectSystem=strict\n", ""))["Service"]
    assert "ProtectSystem" not in broken
    with pytest.raises(SystemExit):
        build_parser().parse_args(["relay", "serve", "--config", "x"])  # no such subcommand


def _runnable_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this install's quotarelay (verify checks it exists)."""
    script = Path(sys.executable).parent / "quotarelay"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace("/opt/quotarelay/bin/quotarelay", str(script)))
    return copy


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verifies_the_unit_and_scores_it_well(unit: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify` finds no problem; the offline security exposure is at most 2.0."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    copy = _runnable_copy(unit, tmp_path)
    verify = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=20", str(copy)],
        capture_output=True,
        text=True,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    assert "Overall exposure level" in security.stdout


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuations joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_the_runtime_only_runs_unprivileged_and_starts_the_relay() -> None:
    """No dev extras, a non-root USER, ENTRYPOINT quotarelay, CMD a real subcommand."""
    steps = dockerfile()
    installs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert installs and all("dev" not in args for args in installs)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    (entry,) = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    (cmd,) = [json.loads(args) for word, args in final if word == "CMD"]
    assert entry == ["quotarelay"]
    assert _command(cmd) and cmd[:2] == ["relay", "run"]
    assert _command(["billing", "serve", "--config", "/etc/quotarelay/billing.toml"])
    copied = {args.split()[0] for word, args in steps if word == "COPY" and "--from" not in args}
    assert {"quota", "relay", "tools"} <= copied and not {"tests", "bench"} & copied


def _docker_answers(tool: str) -> bool:
    try:
        probe = subprocess.run([tool, "info"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def test_docker_build_and_the_image_answers_help() -> None:
    """Where a docker daemon answers: the image builds and `quotarelay --help` runs as non-root."""
    tool = shutil.which("docker")
    if tool is None:
        pytest.skip("docker is not installed")
    if not _docker_answers(tool):
        pytest.skip("no docker daemon answers `docker info` here")
    tag = "quotarelay-test:contrib"
    build = subprocess.run(
        [tool, "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=900
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run(
        [tool, "run", "--rm", "--entrypoint", "sh", tag, "-c", "id -u && quotarelay --help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    uid, *rest = run.stdout.splitlines()
    assert uid != "0" and any("relay" in line for line in rest)
