"""The command line's one exception: a mistake the user can fix.

This module imports nothing of the project, so every subcommand module can
raise `CliError` without importing `tools.cli`, which imports them.
"""

WHAT_TO_DO = "what to do (each has its own --help)"  # the help of every command group


class CliError(Exception):
    """A mistake the user can fix: printed as `quotarelay: <message>`, exit code 2."""
