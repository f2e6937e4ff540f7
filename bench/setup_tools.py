"""The outside tools the suite compares against, and whether they are installed."""

from __future__ import annotations

import shutil
from pathlib import Path

NEEDED = {"ssh": "openssh-client", "socat": "socat"}
SSHD = Path("/usr/sbin/sshd")


def missing_tools() -> list[str]:
    """Names of the tools (and the Debian packages holding them) that are not installed."""
    gone = [f"{tool} ({pkg})" for tool, pkg in NEEDED.items() if shutil.which(tool) is None]
    if not SSHD.exists():
        gone.append(f"{SSHD} (openssh-server)")
    return gone
