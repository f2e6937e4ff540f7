"""The docs agree with the code: links resolve; close reasons, log events and CLI flags exist.

Invariants:
- The code is read as source (`ast`), never imported, and found by walking the
  product folders, so the checks keep working while modules move between files.
- Every check is a function from text to a list of problems; the tests below run
  each on the real docs (no problem allowed) and on a deliberately broken doc
  (the problem must be found), so none of them can pass by finding nothing.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ("relay", "quota", "tools")
CLOSERS = frozenset({"close", "_close", "finish", "close_all"})  # calls that take a close reason

_FENCE = re.compile(r"^\s*```")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_SPAN = re.compile(r"`([^`]+)`")
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_COMMAND = re.compile(r"(?:^|[\s/])quotarelay\s+(.*)")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> Iterator[tuple[bool, str]]:
    """Each line with whether it sits inside a fenced code block."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        yield fenced, line


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for fenced, line in prose_lines(text):
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match and not fenced:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def link_problems(doc: Path, text: str) -> list[str]:
    """Relative links of `text` (the file `doc`) whose file or heading does not exist."""
    problems = []
    for fenced, line in prose_lines(text):
        if fenced:
            continue
        for target in _LINK.findall(_SPAN.sub("", line)):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            path = (doc.parent / path_part).resolve() if path_part else doc
            if not path.exists():
                problems.append(f"{doc.name}: {target}: no file {path_part}")
            elif anchor and path.suffix == ".md":
                page = text if path == doc else path.read_text()
                if anchor not in anchors(page):
                    problems.append(f"{doc.name}: {target}: no heading #{anchor}")
    return problems


# -- the product code, read as source ---------------------------------------------------


@cache
def product_trees() -> tuple[tuple[Path, ast.Module], ...]:
    paths = sorted(p for top in PRODUCT for p in (ROOT / top).rglob("*.py"))
    return tuple((p, ast.parse(p.read_text(), str(p))) for p in paths)


@cache
def string_literals() -> frozenset[str]:
    return frozenset(
        node.value
        for _, tree in product_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


@cache
def fstring_prefixes() -> frozenset[str]:
    """Literal heads of f-strings such as f"stream_{event}": names built at run time."""
    heads = set()
    for _, tree in product_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and node.values:
                head = node.values[0]
                if isinstance(head, ast.Constant) and isinstance(head.value, str):
                    heads.add(head.value)
    return frozenset(heads)


def exists_in_code(name: str) -> bool:
    """A literal, or an f-string head followed by a literal (f"stream_{e}" with "open")."""
    if name in string_literals():
        return True
    return any(
        name.startswith(head) and name[len(head) :] in string_literals()
        for head in fstring_prefixes()
    )


def _strings(node: ast.expr | None, names: dict[str, str]) -> set[str]:
    """The close reasons an argument expression can be: literals, branches, constants."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body, names) | _strings(node.orelse, names)
    if isinstance(node, ast.Name | ast.Attribute):
        key = node.id if isinstance(node, ast.Name) else node.attr
        return {names[key]} if key in names else set()
    return set()


def _reason_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "..." and members of classes named like CloseReason."""
    names: dict[str, str] = {}
    for stmt in tree.body:
        body = stmt.body if isinstance(stmt, ast.ClassDef) and "Close" in stmt.name else [stmt]
        for inner in body:
            if isinstance(inner, ast.Assign) and isinstance(inner.value, ast.Constant):
                for target in inner.targets:
                    if isinstance(target, ast.Name) and isinstance(inner.value.value, str):
                        names[target.id] = inner.value.value
    return names


@cache
def emitted_close_reasons() -> frozenset[str]:
    """Reasons passed to close()/finish()/close_all(), or set as `close_reason=`."""
    found: set[str] = set()
    for _, tree in product_trees():
        names = _reason_constants(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if callee in CLOSERS:
                for arg in node.args:
                    found |= _strings(arg, names)
            for kw in node.keywords:
                if kw.arg == "close_reason" or (callee in CLOSERS and kw.arg == "reason"):
                    found |= _strings(kw.value, names)
    return frozenset(found)


@cache
def argparse_flags() -> frozenset[str]:
    """Every `--flag` given to an add_argument call under tools/ (the CLI) or bench/."""
    bench = tuple((p, ast.parse(p.read_text(), str(p))) for p in (ROOT / "bench").rglob("*.py"))
    trees = [t for p, t in product_trees() if p.relative_to(ROOT).parts[0] == "tools"]
    return frozenset(
        str(arg.value)
        for tree in (*trees, *(t for _, t in bench))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
    )


# -- what the docs say -------------------------------------------------------------------


def table_column(text: str, header: str, section: str | None = None) -> list[str]:
    """First-column code spans of the tables whose first header cell is `header`."""
    values, in_section, in_table = [], section is None, False
    for fenced, line in prose_lines(text):
        if fenced:
            continue
        if section is not None and line.startswith("#"):
            in_section = line.lstrip("#").strip() == section
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if "|" in line else []
        if not cells:
            in_table = False
        elif cells[0] == header:
            in_table = in_section
        elif in_table and not set(cells[0]) <= set("-: "):
            values += _SPAN.findall(cells[0])[:1]
    return values


def documented_close_reasons(streamlog_md: str) -> list[str]:
    return table_column(streamlog_md, "reason", section="Close reasons")


def documented_events(text: str) -> list[str]:
    return table_column(text, "event")


def documented_flags(text: str) -> set[str]:
    """Flags of `quotarelay ...` commands in code, and code spans that start with a flag."""
    flags: set[str] = set()
    lines = list(prose_lines(text))
    for i, (fenced, line) in enumerate(lines):
        chunks = [line] if fenced else _SPAN.findall(line)
        for chunk in chunks:
            head = _FLAG.match(chunk)
            if head is not None:
                flags.add(head.group(0))
            command = _COMMAND.search(chunk)
            if command is None:
                continue
            words = command.group(1)
            j = i
            while fenced and words.rstrip().endswith("\\") and j + 1 < len(lines):
                j += 1
                words += " " + lines[j][1]
            flags.update(_FLAG.findall(words.split("|")[0]))
    return flags


# -- the real docs -----------------------------------------------------------------------


def test_relative_links_resolve() -> None:
    """Every relative link in README.md and docs/*.md names an existing file and heading."""
    problems = [p for doc in doc_files() for p in link_problems(doc, doc.read_text())]
    assert problems == []


def test_docs_cited_by_code_and_examples_exist() -> None:
    """Every docs/*.md that a product module or an example file names is there."""
    sources = [
        p
        for top in (*PRODUCT, "examples")
        for p in (ROOT / top).rglob("*")
        if p.suffix in {".py", ".toml", ".sh", ".md"}
    ]
    cited = {m for p in sources for m in re.findall(r"docs/[\w.-]+\.md", p.read_text())}
    assert "docs/billing.md" in cited  # examples/billing.toml sends readers there
    assert sorted(c for c in cited if not (ROOT / c).exists()) == []


def test_documented_close_reasons_are_the_emitted_ones() -> None:
    """The close-reason table of docs/streamlog.md lists exactly the reasons the code writes."""
    documented = documented_close_reasons((ROOT / "docs" / "streamlog.md").read_text())
    emitted = emitted_close_reasons()
    assert "done" in emitted and len(emitted) >= 8, "the code's close reasons were not found"
    assert [r for r in documented if r not in string_literals()] == []
    assert sorted(emitted - set(documented)) == []


def test_documented_events_exist() -> None:
    """Every event named in an `event` table of the docs is a name the code logs or prints."""
    events = [e for doc in doc_files() for e in documented_events(doc.read_text())]
    assert len(events) >= 30, "the event tables were not found"
    assert [e for e in events if not exists_in_code(e)] == []


def test_documented_cli_flags_exist() -> None:
    """Every `--flag` the docs give to `quotarelay ...` is defined by an argparse parser."""
    flags = set().union(*(documented_flags(doc.read_text()) for doc in doc_files()))
    assert {"--config", "--follow", "--udp"} <= flags, "no flags found in the docs"
    assert sorted(flags - argparse_flags()) == []


# -- each check on a broken doc ----------------------------------------------------------


def test_link_check_finds_a_missing_file_and_heading() -> None:
    """A link to a missing file, or to a heading a page does not have, is reported."""
    text = "See [x](docs/nothing.md) and [y](docs/relay.md#no-such-heading) and [z](#here).\n"
    problems = link_problems(ROOT / "README.md", text + "## Here\n")
    assert len(problems) == 2
    assert "no file docs/nothing.md" in problems[0]
    assert "no heading #no-such-heading" in problems[1]


def test_close_reason_check_finds_an_invented_and_a_missing_reason() -> None:
    """A reason the code never writes, and one the table leaves out, are both caught."""
    table = "## Close reasons\n\n| reason | when |\n|---|---|\n| `vanished` | never |\n"
    documented = documented_close_reasons(table)
    assert documented == ["vanished"]
    assert "vanished" not in string_literals()
    assert "done" in emitted_close_reasons() - set(documented)


def test_event_and_flag_checks_find_invented_names() -> None:
    """An event or a flag that the code does not have is not taken as existing."""
    events = documented_events("| event | when |\n|---|---|\n| `relay_exploded` | never |\n")
    assert events == ["relay_exploded"] and not exists_in_code("relay_exploded")
    assert exists_in_code("stream_close")  # built as f"stream_{event}" from "close"
    flags = documented_flags("```sh\nquotarelay streams --db x \\\n    --folow\n```\n")
    assert flags == {"--db", "--folow"}
    assert flags - argparse_flags() == {"--folow"}


_MARKER = re.compile(r"^(<{7}|={7}|>{7})( |$)", re.M)


def conflict_markers(name: str, text: str) -> list[str]:
    """Lines of a merge left unresolved: `<<<<<<< `, `=======`, `>>>>>>> `."""
    return [
        f"{name}:{text.count(chr(10), 0, m.start()) + 1}: merge conflict marker"
        for m in _MARKER.finditer(text)
    ]


def test_no_file_holds_a_merge_conflict_marker() -> None:
    """Docs, code, tests and build files carry no unresolved merge."""
    suffixes = {".md", ".py", ".toml", ".cfg", ".html", ".js", ".css", ".sh", ".service", ""}
    problems: list[str] = []
    for folder in ("", "docs", "quota", "relay", "tools", "tests", "bench", "contrib", "examples"):
        base = ROOT / folder
        paths = [p for p in base.iterdir() if p.is_file()] if not folder else base.rglob("*")
        for path in paths:
            if path.is_file() and path.suffix in suffixes and "__pycache__" not in path.parts:
                text = path.read_text(errors="replace")
                problems += conflict_markers(str(path.relative_to(ROOT)), text)
    assert problems == []
    assert conflict_markers("x.md", "a\n<<<<<<< HEAD\nb\n=======\nc\n>>>>>>> main\n") == [
        "x.md:2: merge conflict marker",
        "x.md:4: merge conflict marker",
        "x.md:6: merge conflict marker",
    ]
