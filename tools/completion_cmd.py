"""`quotarelay completion bash|zsh`: a shell completion script made from the argparse tree.

Invariants:
- The script is generated from the parsers themselves, so every command,
  option and choice the command line accepts is offered, and nothing else; a
  new flag needs no change here.
- It completes command words by path ("billing ledger"), an option's choices
  after the option ("--log-level i" -> "info"), file names after an option
  that takes any other value, and leaves positional values (ids, sizes) alone.
- zsh runs the same bash function through `bashcompinit`.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

FILES = "-"  # an option whose value is a file name (or anything without choices)
ROOT_OPTIONS = ("--help", "--version")  # the top parser's, which this module does not see

_BASH = """\
# quotarelay completion for bash: `source <(quotarelay completion bash)`, or save it
# as /etc/bash_completion.d/quotarelay.
_quotarelay_words() {{
    case "$1" in
{words}
        *) return 1 ;;
    esac
}}
_quotarelay_values() {{
    case "$1" in
{values}
        *) return 1 ;;
    esac
}}
_quotarelay() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" path="" word i values
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if [[ -n $prev ]] && _quotarelay_values "$path|$prev" >/dev/null; then
            prev=""
            continue
        fi
        prev=""
        if [[ $word == -* ]]; then
            prev=$word
        elif _quotarelay_words "${{path:+$path }}$word" >/dev/null; then
            path="${{path:+$path }}$word"
        fi
    done
    if [[ -n $prev ]] && values=$(_quotarelay_values "$path|$prev"); then
        if [[ $values == {files} ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$values" -- "$cur"))
        fi
        return 0
    fi
    COMPREPLY=($(compgen -W "$(_quotarelay_words "$path")" -- "$cur"))
}}
complete -F _quotarelay quotarelay
"""

_ZSH = """\
#compdef quotarelay
# quotarelay completion for zsh: `source <(quotarelay completion zsh)` in ~/.zshrc.
autoload -U +X bashcompinit && bashcompinit
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `completion`; its script covers every command registered on `subparsers`."""
    p = subparsers.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete for")

    async def run(args: argparse.Namespace) -> int:
        print(script(args.shell, subparsers), end="")
        return 0

    p.set_defaults(func=run)


def script(shell: str, commands: argparse._SubParsersAction[Any]) -> str:
    """The completion script for `shell` ("bash" or "zsh")."""
    words: dict[str, list[str]] = {"": [*commands.choices, *ROOT_OPTIONS]}
    values: dict[str, str] = {}
    for name, parser in commands.choices.items():
        _walk(parser, name, words, values)
    body = _BASH.format(
        words=_cases(words), values=_cases({k: [v] for k, v in values.items()}), files=FILES
    )
    return body if shell == "bash" else _ZSH + body


def _walk(
    parser: argparse.ArgumentParser, path: str, words: dict[str, list[str]], values: dict[str, str]
) -> None:
    offered: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                offered.append(name)
                _walk(sub, f"{path} {name}", words, values)
        elif not action.option_strings:
            offered += [str(c) for c in action.choices or ()]  # a positional's choices
        else:
            long = [o for o in action.option_strings if o.startswith("--")]
            offered += long
            if action.nargs != 0:
                choices = " ".join(str(c) for c in action.choices or ()) or FILES
                values.update({f"{path}|{option}": choices for option in action.option_strings})
    words[path] = offered


def _cases(table: dict[str, list[str]]) -> str:
    lines = []
    for key, items in table.items():
        pattern = shlex.quote(key) if key else "''"
        lines.append(f"        {pattern}) echo {shlex.quote(' '.join(items))} ;;")
    return "\n".join(lines)
