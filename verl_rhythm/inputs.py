# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Reading a user's files, and reporting a user's mistakes, in one line each.

The command-line tools (``verl-rhythm analyze``, ``python -m verl_rhythm.data.*``) read prompt and data files a
person wrote. Every problem with such input becomes an :class:`InputError` whose message is one line naming the file
(and line) or the flag, and the tools print it without a traceback (:func:`exit_with`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn


class InputError(ValueError):
    """A problem with a user's file, flag or value; the message is one line that names it."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


class SettingError(ValueError):
    """A setting out of range, by the name of the setting (a dataclass field), its value and the problem.

    Attributes:
        name: the setting (``"temperature"``); a command line turns it into its flag.
        value: the value as the message shows it.
        problem: what is wrong, e.g. ``"must be >= 1"``.
    """

    def __init__(self, name: str, value: Any, problem: str):
        super().__init__(f"{name}={value}: {problem}")
        self.name, self.value, self.problem = name, value, problem


def one_line(message: Any) -> str:
    """``message`` as a single line: newlines and runs of spaces become one space, at most 1000 characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= 1000 else text[:997] + "..."


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is accepted and dropped).

    Raises:
        InputError: the file is missing, a folder, unreadable, or not UTF-8 (with the line of the first bad byte).
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8"
        ) from None


def parse_json(text: str, path: str | Path) -> Any:
    """``json.loads(text)``; a syntax error names ``path`` and the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}:{err.colno}: malformed JSON: {err.msg}") from None
    except RecursionError:
        raise InputError(f"{path}: malformed JSON: nested too deeply") from None


def parse_jsonl(text: str, path: str | Path) -> list[tuple[int, Any]]:
    """``(line number, value)`` of each non-blank line (one JSON value a line); an error names ``path`` and the true
    line number of the file (blank lines count, and only ``\\n`` ends a line)."""
    out = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): \x0c or U+2028 end no line
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}:{err.colno}: malformed JSON line: {err.msg}") from None
        except RecursionError:
            raise InputError(f"{path}:{number}: malformed JSON line: nested too deeply") from None
    return out


def check_out_dir(out: str | Path, flag: str = "--out") -> Path:
    """Fail before any work when ``out`` cannot become a folder we write to; returns the expanded path.

    ``out`` is not created here: the nearest existing folder (``out`` itself, or the ancestor it would be created
    in) gets a probe file, created and removed at once (a permission check would pass for root on a read-only mount).

    Raises:
        InputError: ``out`` or an ancestor is a file, or the folder is not writable.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is a file, expected a folder")
    base = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not base.is_dir():
        raise InputError(f"{flag} {out}: {base} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=base, prefix=".verl-rhythm-probe-"):
            pass
    except OSError as err:
        raise InputError(f"{flag} {out}: cannot create files in {base} ({err.strerror or err})") from None
    return out


def exit_with(prog: str, message: Any, code: int = 2) -> NoReturn:
    """Print ``<prog>: error: <message>`` as one line on stderr and exit with ``code`` (2, like argparse)."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with every usage error as one line (``<prog>: error: ... (see <prog> --help)``), no usage block."""

    def error(self, message: str) -> NoReturn:
        exit_with(self.prog, f"{message} (see {self.prog} --help)")
