"""`--log-level` and `--log-format` for the commands that run a service (`serves=True`).

`tools.cli` hands both to `relay.logs.configure`, the one place logs are set up.
"""

from __future__ import annotations

import argparse

from relay.logs import FORMATS, LEVELS


def add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", choices=tuple(LEVELS), default="info", help="lowest level logged (info)"
    )
    parser.add_argument(
        "--log-format", choices=FORMATS, default="json", help="json lines, or text for people"
    )
