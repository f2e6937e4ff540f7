"""The wheel installs the product (quota, relay, tools), never the bench or the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = {"quota", "relay", "tools"}
# Build from a copy, so the build leaves no build/ or egg-info in the working tree.
SKIP = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def shipped(wheel: Path) -> set[str]:
    """The top-level folders and modules of a wheel, without its metadata."""
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
    return {t for t in tops if not t.endswith((".dist-info", ".data"))}


def stray(wheel: Path) -> list[str]:
    """Files of a wheel that belong to the bench or the tests, wherever they sit."""
    with zipfile.ZipFile(wheel) as zf:
        return [n for n in zf.namelist() if {"bench", "tests"} & set(n.split("/")[:-1])]


def test_wheel_holds_the_product_and_no_bench_or_test(tmp_path: Path) -> None:
    """`pip wheel .` ships quota, relay and tools with the console script, no bench, no tests."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run([*cmd, "-w", str(out), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("quotarelay-*.whl")
    assert shipped(wheel) == PRODUCT
    assert stray(wheel) == []
    with zipfile.ZipFile(wheel) as zf:
        assert "tools/cli.py" in zf.namelist()
        console = "quota/billing/console/"  # the web consoles' templates and static files ship
        operator = "relay/admin/console/"
        assert {
            console + "templates/overview.html",
            console + "static/console.css",
            operator + "templates/index.html",
            operator + "static/live.js",
        } <= set(zf.namelist())
        entry = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "quotarelay = tools.cli:main" in zf.read(entry[0]).decode()


def test_stray_finds_a_bench_module_inside_a_product_package(tmp_path: Path) -> None:
    """A bench module shipped under tools/ (where it used to live) counts as stray."""
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tools/cli.py", "")
        zf.writestr("tools/bench/rigs.py", "")
        zf.writestr("tests/rigs/relay.py", "")
    assert stray(wheel) == ["tools/bench/rigs.py", "tests/rigs/relay.py"]
    assert shipped(wheel) == {"tools", "tests"}
