"""Placeholder: the `up_cmd` subcommands are not built yet."""

import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """Nothing to register yet."""
