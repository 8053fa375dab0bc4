# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Every command the README and docs/*.md quote runs as written: its arguments are ones its parser accepts.

A figure in the docs is only as good as the command printed next to it. This finds every ``python
benchmarks/<script>.py ...``, ``bash benchmarks/<script>.sh ...`` and ``python -m verl_rhythm... ...`` in the
README and the pages under docs/ (fenced blocks, with their ``\\`` continuations, and inline code, also when it wraps
over two lines) and parses its arguments with the command's own parser, without running it: the benchmarks'
``build_parser()``, the wrappers' fixed arguments plus theirs, and for the package's modules their ``main`` up to
its ``parse_args`` (:func:`_parse_only`). The tables' capture paths are checked against ``benchmarks/capture.py
--paths`` too, so a column of figures from a path the benchmark no longer runs fails here.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
COMMAND = re.compile(r"(?:^|(?<=[\s/]))(?:python3?|bash) (-m verl_rhythm[\w.]*|benchmarks/\w+\.(?:py|sh))\b(.*)$")
END = re.compile(r"\s(?:#|&&|\|\||;|\|)")


def commands_in(text: str) -> list[tuple[str, list[str]]]:
    """``(target, args)`` of every command in a markdown text: target ``benchmarks/x.py``, ``benchmarks/x.sh`` or
    ``-m module``; args cut at a shell comment or operator."""
    lines = []
    for block in FENCE.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text).replace("```", "")
    lines += [span.replace("\n", " ") for span in INLINE.findall(prose)]
    found = []
    for line in lines:
        match = COMMAND.search(line.strip())
        if match:
            target, rest = match.groups()
            cut = END.search(rest)
            found.append((target, shlex.split(rest[: cut.start()] if cut else rest)))
    return found


DOCUMENTED = sorted(
    {
        (page.relative_to(ROOT).as_posix(), target, tuple(args))
        for page in PAGES
        for target, args in commands_in(page.read_text(encoding="utf-8"))
    }
)
IDS = [f"{page}:{target} {' '.join(args)}" for page, target, args in DOCUMENTED]


class _Parsed(Exception):
    """Raised by :func:`_parse_only` once the outermost ``parse_args``/``parse_known_args`` call has returned."""

    def __init__(self, result):
        super().__init__("parsed")
        self.result = result


def _parse_only(monkeypatch, main, argv: list[str]):
    """Run ``main(argv)`` up to its argument parsing and stop there: the parsed result, or the parser's error.

    ``ArgumentParser.parse_args``/``parse_known_args`` (also on subclasses, and under subcommands) are wrapped so that
    the outermost call raises :class:`_Parsed` with its result instead of returning; nothing after parsing runs.
    """
    depth = [0]

    def wrap(original):
        def parse(self, args=None, namespace=None):
            depth[0] += 1
            try:
                result = original(self, args, namespace)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed(result)
            return result

        return parse

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", wrap(argparse.ArgumentParser.parse_args))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", wrap(argparse.ArgumentParser.parse_known_args))
    with pytest.raises(_Parsed) as parsed:
        main(argv)
    return parsed.value.result


def _benchmark_parser(script: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"benchmarks.{Path(script).stem}")
    assert hasattr(module, "build_parser"), f"{script}: no build_parser() to parse its documented commands with"
    return module.build_parser()


WRAPPER_OPTIONS = {"benchmarks/gpu_check.sh": {"--out": 1, "--dry-run": 0}}
"""Options a ``benchmarks/*.sh`` wrapper takes itself (name → number of values), before the rest reach its script."""


def _wrapped(script_sh: str, args: list[str]) -> tuple[str, list[str]]:
    """The Python script a ``benchmarks/*.sh`` wrapper runs and the arguments that reach it: the ones the wrapper
    passes before its own ``"$@"``, or, for a wrapper that takes options itself (:data:`WRAPPER_OPTIONS`), what is
    left of ``args`` in its ``"${args[@]}"``."""
    text = (ROOT / script_sh).read_text()
    own = WRAPPER_OPTIONS.get(script_sh)
    if own is None:
        match = re.search(r"(benchmarks/\w+\.py)((?: [^\s\"]+)*) \"\$@\"", text)
        assert match, f"{script_sh}: no 'benchmarks/<script>.py ... \"$@\"' line"
        return match.group(1), match.group(2).split() + args
    match = re.search(r"(benchmarks/\w+\.py)[^\n]*\"\$\{args\[@\]\}\"", text)
    assert match, f"{script_sh}: no 'benchmarks/<script>.py ... \"${{args[@]}}\"' line"
    rest, i = [], 0
    while i < len(args):
        name = args[i].split("=", 1)[0]
        if name in own:
            i += 1 + (own[name] if "=" not in args[i] else 0)
        else:
            rest.append(args[i])
            i += 1
    return match.group(1), rest


def check_command(monkeypatch, target: str, args: list[str]) -> None:
    """Parse ``args`` with ``target``'s parser; fail naming the command and the parser's error."""
    where = f"{target} {' '.join(args)}"
    if target.startswith("-m "):
        module = target[3:]
        assert importlib.util.find_spec(module) is not None, f"python {where}: no module {module}"
        main = importlib.import_module(f"{module}.__main__" if module == "verl_rhythm" else module).main
        try:
            result = _parse_only(monkeypatch, main, args)
        except SystemExit as exc:
            raise AssertionError(f"python {where}: its parser refuses these arguments ({exc})") from None
        unknown = result[1] if isinstance(result, tuple) else []
        assert all("=" in a and not a.startswith("-") for a in unknown), f"python {where}: not parsed: {unknown}"
        return
    if target.endswith(".sh"):
        script, args = _wrapped(target, args)
    else:
        script = target
    parser = _benchmark_parser(script)
    try:
        parser.parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{where}: {script}'s parser refuses these arguments (exit {exc.code})") from None


def test_the_docs_quote_commands():
    targets = {target for _, target, _ in DOCUMENTED}
    assert {"benchmarks/capture.py", "benchmarks/credit.py", "benchmarks/import_cost.py"} <= targets
    assert "-m verl_rhythm.quickstart" in targets and "benchmarks/gpu_check.sh" in targets


@pytest.mark.parametrize(("page", "target", "args"), DOCUMENTED, ids=IDS)
def test_every_documented_command_parses(monkeypatch, page, target, args):
    check_command(monkeypatch, target, list(args))


def test_every_benchmark_exposes_its_parser():
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        assert isinstance(_benchmark_parser(script.name), argparse.ArgumentParser), script.name


@pytest.mark.parametrize(
    ("target", "args"),
    [
        ("benchmarks/capture.py", ["--sizes", "1024", "--paths", "chunked"]),
        ("benchmarks/credit.py", ["--strategies", "coupled"]),
        ("benchmarks/gpu_check.sh", ["--paths", "fused"]),
        ("-m verl_rhythm.data.countdown", ["--no-such-flag"]),
        ("-m verl_rhythm.quickstart", ["--no-such-flag"]),
    ],
)
def test_the_check_refuses_arguments_the_parser_does_not_take(monkeypatch, target, args):
    """The check can fail: a path, flag or choice the command does not take is an error naming the command."""
    with pytest.raises(AssertionError, match=re.escape(target)):
        check_command(monkeypatch, target, args)


def test_commands_are_found_in_fences_with_continuations_and_in_wrapped_inline_code():
    text = (
        "Run `python benchmarks/capture.py --sizes 4096 --paths fused --threads 1\n--repeats 3` here.\n\n"
        "```bash\npython benchmarks/capture.py --sizes 8192 \\\n    --repeats 3   # slow\n"
        ".venv/bin/python -m verl_rhythm.quickstart --steps 1 a.b=1 && echo done\n```\n"
    )
    assert commands_in(text) == [
        ("benchmarks/capture.py", ["--sizes", "8192", "--repeats", "3"]),
        ("-m verl_rhythm.quickstart", ["--steps", "1", "a.b=1"]),
        ("benchmarks/capture.py", ["--sizes", "4096", "--paths", "fused", "--threads", "1", "--repeats", "3"]),
    ]


def _table_paths(text: str) -> set[str]:
    """Capture paths the markdown tables name: ``<path> capture`` in a header, and the cells of a ``path`` column."""
    names = set()
    for table in re.findall(r"((?:^\|.*\|\n)+)", text, re.MULTILINE):
        rows = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table.strip().splitlines()]
        if len(rows) < 2 or not set(rows[1][0]) <= set("-: "):
            continue
        header = rows[0]
        for cell in header:
            names.update(re.findall(r"(\w+) capture\b", cell))
        if "path" in header:
            column = header.index("path")
            names.update(row[column].strip("*` ") for row in rows[2:] if column < len(row))
    return names


def test_capture_paths_in_the_tables_are_paths_the_benchmark_runs():
    """A table's figures for a capture path come from ``benchmarks/capture.py --paths``; a path it does not offer
    (the per-sequence "chunked" path, now a test harness) has no command that prints its figures."""
    offered = set(next(a for a in _benchmark_parser("capture.py")._actions if a.dest == "paths").choices)
    for page in PAGES:
        named = _table_paths(page.read_text(encoding="utf-8"))
        assert named <= offered, f"{page.name}: tables give figures for {sorted(named - offered)}, not a --paths choice"
