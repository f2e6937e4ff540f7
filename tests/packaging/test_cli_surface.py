"""The command line as people meet it: help on every argument, --version, shell completion
sourced in a real bash, and check-config reporting every problem at once."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tools.cli import DESCRIPTION, build_parser, main
from tools.render import duration, field, problems_of, size

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "tools.cli"]


def _missing_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if action.help in (None, "", argparse.SUPPRESS):
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += _missing_help(sub, f"{path} {name}")
    return missing


def test_every_argument_and_command_has_help() -> None:
    """Walking the whole argparse tree finds no argument and no command without help."""
    assert _missing_help(build_parser(), "quotarelay") == []


def test_top_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` opens with what quotarelay is; `--version` prints the package's version."""
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.split("\n\n")[1].replace("\n", " ") == DESCRIPTION
    with pytest.raises(SystemExit):
        main(["--version"])
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"quotarelay {wanted}\n"


def _complete(script: str, *words: str) -> list[str]:
    """What bash offers after `quotarelay WORDS` (the last word being completed)."""
    probe = (
        'source /dev/stdin; complete -p quotarelay >&2; COMP_WORDS=("$@");'
        ' COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _quotarelay; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "-c", probe, "bash", "quotarelay", *words],
        input=script,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert done.stderr.strip() == "complete -F _quotarelay quotarelay"
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion_from_the_argparse_tree(tmp_path: Path) -> None:
    """The bash script, sourced in a real bash, completes commands, options, choices, files."""
    script = subprocess.run(
        [*CLI, "completion", "bash"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert set(_complete(script, "")) == {
        *("relay", "streams", "billing", "up", "agent", "completion", "--help", "--version"),
    }
    assert _complete(script, "billing", "le") == ["ledger"]
    assert _complete(script, "relay", "ch") == ["check-config"]
    assert _complete(script, "billing", "ledger", "acc_1", "--s") == ["--since"]
    assert _complete(script, "billing", "ledger", "--kind", "d") == ["deposit"]
    assert _complete(script, "relay", "run", "--log-level", "") == [
        *("debug", "info", "warning", "error"),
    ]
    assert _complete(script, "relay", "run", "--config", "x", "--log-f") == ["--log-format"]
    (tmp_path / "relay.toml").touch()
    assert _complete(script, "relay", "run", "--config", str(tmp_path / "rel")) == [
        str(tmp_path / "relay.toml")
    ]
    assert "--key" not in _complete(script, "billing", "ledger", "--")
    assert "--key" in _complete(script, "billing", "deposit", "--")


def test_zsh_completion_runs_the_bash_function() -> None:
    """The zsh script loads bashcompinit and then the same function; zsh sources it if present."""
    script = subprocess.run(
        [*CLI, "completion", "zsh"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert script.startswith("#compdef quotarelay\n") and "bashcompinit" in script
    assert "complete -F _quotarelay quotarelay" in script
    if shutil.which("zsh") is None:
        return  # the script's bash part is the one sourced above
    # zsh calls the function through bashcompinit in sh emulation, then filters by prefix
    probe = (
        "autoload -U compinit && compinit -u -D; source /dev/stdin;"
        ' probe() { emulate -L sh; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1));'
        ' _quotarelay; printf "%s\\n" "${COMPREPLY[@]}"; }; probe "$@"'
    )

    def offered(*words: str) -> list[str]:
        done = subprocess.run(
            ["zsh", "-f", "-c", probe, "zsh", "quotarelay", *words],
            input=script,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return [line for line in done.stdout.splitlines() if line]

    assert "ledger" in offered("billing", "le") and "run" not in offered("billing", "le")
    assert offered("relay", "run", "--log-level", "") == ["debug", "info", "warning", "error"]


BAD_RELAY = """\
[relay]
public_ports = "9-3"
bogus = 1
[quota]
low_water = "lots"
"""


def test_relay_check_config_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`relay check-config` names every bad key at once and exits 2; a good file exits 0."""
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_RELAY)
    assert main(["relay", "check-config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}: 3 problems"
    assert [line.split(":")[0].strip() for line in err[1:]] == [
        *("relay.bogus", "relay.public_ports", "quota.low_water"),
    ]
    good = tmp_path / "good.toml"
    good.write_text('[admin]\ntoken = "' + "a" * 32 + '"\n')
    good.chmod(0o600)
    assert main(["relay", "check-config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"


def test_billing_check_config_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`billing check-config` names every bad key at once and exits 2; the example passes."""
    monkeypatch.delenv("QUOTARELAY_BILLING_SERVER_ADMIN_TOKEN", raising=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "x"\nadmin_token = "short"\n[pricing]\nnope = 1\n')
    assert main(["billing", "check-config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}: 3 problems"
    assert {line.split(":")[0].strip() for line in err[1:]} == {
        *("server.port", "server.admin_token", "pricing.nope"),
    }
    example = (ROOT / "examples" / "billing.toml").read_text()
    published = tmp_path / "published.toml"
    published.write_text(example)
    published.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    assert main(["billing", "check-config", str(published)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all("; set a secret one of your own" in line for line in err[1:])
    good = tmp_path / "billing.toml"
    good.write_text(example.replace("change-me-", "own-secret-"))
    good.chmod(0o600)
    assert main(["billing", "check-config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"


def test_figures_read_the_same_everywhere() -> None:
    """Sizes keep their exact bytes, coin three decimals, times UTC, None a dash."""
    assert [size(n) for n in (999, 1500, 10**7, -5_000_752)] == [
        *("999", "1500 (1.5K)", "10000000 (10M)", "-5000752 (-5.0M)"),
    ]
    assert (field("amount", -500), field("metered_price_per_gb", 100)) == ("-0.500", "0.100")
    assert field("at", 1796185649424) == "2026-12-02T04:27:29Z"
    assert (field("agent_id", None), field("next_cursor", None), field("frozen", False)) == (
        *("-", "-", "no"),
    )
    assert duration(90_000_000) == "1d01h"
    text = "a.b: x; set y; c (--c): z"
    assert problems_of(text) == ["a.b: x; set y", "c (--c): z"]
