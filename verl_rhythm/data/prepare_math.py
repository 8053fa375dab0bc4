# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The paper's math data in verl's RL parquet format: DAPO-Math-17K (train) and five evaluation sets.

verl 0.9.1 ships no plain DAPO-Math-17K preparation (its DAPO recipe, now in the separate verl-recipe repository,
downloads an already-converted parquet; ``examples/data_preprocess/dapo_multiturn_w_tool.py`` is a tool-use variant)
and none for AIME25, AMC23, MATH500 or OlympiadBench. This module writes, under ``--out``:

- ``dapo_math_17k.parquet``: DAPO-Math-17K with duplicate prompts dropped (the hub file repeats problems),
  ``data_source`` ``math_dapo``;
- ``aime24.parquet``, ``aime25.parquet``, ``amc23.parquet``, ``math500.parquet``, ``olympiadbench.parquet``: each
  problem in DAPO's own prompt template (the format the policy is trained on), ``data_source`` = the file stem.

Scoring is verl's ``math_dapo`` scorer for all six (see :mod:`verl_rhythm.data.reward`).

Sources: a local ``.parquet``, ``.json`` or ``.jsonl`` file, or a local dataset folder, read offline; anything
else is taken as a Hugging Face hub id and needs a machine that reaches the hub. Nothing is downloaded at import.
Run ``python -m verl_rhythm.data.prepare_math --help``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_rhythm.data.parquet import write_parquet
from verl_rhythm.inputs import (
    ArgumentParser,
    InputError,
    check_out_dir,
    exit_with,
    one_line,
    parse_json,
    parse_jsonl,
    read_text,
)

DAPO_SOURCE = "BytedTsinghua-SIA/DAPO-Math-17k"
DAPO_DATA_SOURCE = "math_dapo"
TRAIN_FILE = "dapo_math_17k.parquet"

DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
"""DAPO-Math-17K's prompt template; the evaluation sets are put in it so train and test ask for the same format."""

QUESTION_FIELDS = ("problem", "question", "Problem", "Question", "prompt")
ANSWER_FIELDS = ("answer", "final_answer", "expected_answer", "Answer", "solution")


@dataclass(frozen=True)
class Source:
    """Where one evaluation set comes from by default (a hub id, with split and config)."""

    hub_id: str
    split: str
    config: str | None = None


EVAL_SOURCES = {
    "aime24": Source("HuggingFaceH4/aime_2024", "train"),
    "aime25": Source("math-ai/aime25", "test"),
    "amc23": Source("math-ai/amc23", "test"),
    "math500": Source("HuggingFaceH4/MATH-500", "test"),
    "olympiadbench": Source("Hothan/OlympiadBench", "train", "OE_TO_maths_en_COMP"),
}
"""Default sources of the evaluation sets (names = ``data_source`` = file stems). OlympiadBench is its
English, text-only, open-ended competition-math subset (675 problems)."""


def load_records(source: str, split: str = "train", config: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local file/folder or a hub data set, as plain Python dicts.

    Raises:
        InputError: a local file that is missing, not UTF-8, malformed (file and line named), of an unsupported type,
            or whose rows are not JSON objects.
        RuntimeError: the hub could not be reached (message says to pass a local file instead).
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                records = pq.read_table(path).to_pylist()
            except Exception as err:  # pyarrow's errors (ArrowInvalid, OSError...) vary by version
                raise InputError(f"{path}: not a readable parquet file ({err})") from None
        elif path.suffix == ".jsonl":
            numbered = parse_jsonl(read_text(path), path)
            bad = [n for n, row in numbered if not isinstance(row, dict)]
            if bad:
                raise InputError(f"{path}:{bad[0]}: {len(bad)} line(s) are not JSON objects (this one first)")
            records = [row for _, row in numbered]
        elif path.suffix == ".json":
            data = parse_json(read_text(path), path)
            records = data["data"] if isinstance(data, dict) and "data" in data else data
            if not isinstance(records, list):
                raise InputError(f"{path}: expected a JSON list of rows (or an object with a 'data' list)")
        else:
            raise InputError(f"{path}: unsupported file type {path.suffix!r} (use .parquet, .json or .jsonl)")
        bad = [i for i, row in enumerate(records) if not isinstance(row, dict)]
        if bad:
            raise InputError(f"{path}: {len(bad)} row(s) are not JSON objects (first: row {bad[0]})")
        return records
    if not path.is_dir() and (source.startswith(("/", ".", "~")) or path.suffix in (".parquet", ".json", ".jsonl")):
        raise InputError(f"{source}: no such file or folder")
    import datasets

    try:
        return list(datasets.load_dataset(str(path) if path.is_dir() else source, config, split=split))
    except Exception as err:  # the hub's errors vary by version; the advice is the same
        raise RuntimeError(
            f"could not load {source!r} (split {split!r}) with datasets.load_dataset: {one_line(err)}. Without hub "
            "access, download the set elsewhere and pass the local file (.parquet/.json/.jsonl)."
        ) from err


def pick_field(rows: list[dict[str, Any]] | dict[str, Any], candidates: tuple[str, ...], what: str, origin: str) -> str:
    """The first of ``candidates`` that some row holds with a string, number or list value (``prompt`` only as a
    string: a list there is verl's chat format, not a bare question); InputError listing the columns otherwise."""
    rows = [rows] if isinstance(rows, dict) else rows
    for name in candidates:
        for row in rows:
            value = row.get(name)
            if isinstance(value, (str, int, float, list)) and not isinstance(value, bool):
                if name == "prompt" and not isinstance(value, str):
                    break  # verl's chat-format prompt, not a bare question
                return name
    columns = sorted({key for row in rows for key in row})
    raise InputError(f"{origin}: no {what} column among {list(candidates)}; the rows have {columns}")


def clean_answer(value: Any, field: str) -> str:
    """Ground-truth string: a list joined with ", ", an integral float as an integer (AMC23's ``27.0`` -> ``27``),
    a full ``solution`` reduced to its last ``\\boxed{}``, surrounding ``$`` removed. verl's ``math_dapo``
    normaliser does the rest at scoring time."""
    if isinstance(value, list):
        value = ", ".join(clean_answer(v, field) for v in value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if field == "solution" and "\\boxed" in text:
        from verl.utils.reward_score.math_dapo import last_boxed_only_string, remove_boxed

        boxed = last_boxed_only_string(text)
        text = remove_boxed(boxed) if boxed else text
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    return text


def row_problem(row: dict[str, Any], q_field: str, a_field: str) -> tuple[str, str] | str:
    """``(question, ground_truth)`` of one raw row, or the reason it cannot be a training/eval row: a question that
    is missing, not a string or blank; an answer that is missing, null, NaN, a bool, empty, or a list holding any
    of those (a list of answers is joined, as OlympiadBench's ``final_answer`` needs)."""
    question = row.get(q_field)
    if not isinstance(question, str):
        return f"{q_field} is {_kind(question)}, not a string"
    if not question.strip():
        return f"{q_field} is blank"
    answer = row.get(a_field)
    items = answer if isinstance(answer, list) else [answer]
    if not items:
        return f"{a_field} is an empty list"
    for item in items:
        if item is None or isinstance(item, bool) or not isinstance(item, (str, int, float)):
            return f"{a_field} {'holds' if isinstance(answer, list) else 'is'} {_kind(item)}"
        if isinstance(item, float) and not math.isfinite(item):
            return f"{a_field} is {item}"
    truth = clean_answer(answer, a_field)
    if not truth or any(not str(item).strip() for item in items):
        return f"{a_field} is blank"
    return question.strip(), truth


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}"


def checked_rows(records: list[dict[str, Any]], q_field: str, a_field: str, origin: str) -> list[tuple[int, str, str]]:
    """``(index, question, ground_truth)`` of every usable row; the others are skipped with one line on stderr that
    says how many and which. InputError when no row is usable (nothing would be written)."""
    kept, skipped = [], []
    for i, row in enumerate(records):
        got = row_problem(row, q_field, a_field)
        if isinstance(got, str):
            skipped.append(f"row {i} ({got})")
        else:
            kept.append((i, *got))
    if not kept:
        raise InputError(f"{origin}: none of the {len(records)} rows is usable: {_listed(skipped)}")
    if skipped:
        print(f"{origin}: skipped {len(skipped)} of {len(records)} rows: {_listed(skipped)}", file=sys.stderr)
    return kept


def _listed(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def eval_rows(records: list[dict[str, Any]], name: str, origin: str = "") -> list[dict[str, Any]]:
    """verl rows of one evaluation set, prompts in :data:`DAPO_TEMPLATE`, ``data_source`` = ``name``.

    Every row is checked (:func:`row_problem`); unusable ones are skipped and reported, ``extra_info.index`` keeps
    each row's index in ``records``.

    Raises:
        InputError: no rows, no question or answer column, or no usable row.
    """
    origin = origin or name
    if not records:
        raise InputError(f"{origin}: no rows")
    q_field = pick_field(records, QUESTION_FIELDS, "question", origin)
    a_field = pick_field(records, ANSWER_FIELDS, "answer", origin)
    return [
        {
            "data_source": name,
            "prompt": [{"role": "user", "content": DAPO_TEMPLATE.format(problem=question)}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "test", "index": i},
        }
        for i, question, truth in checked_rows(records, q_field, a_field, origin)
    ]


def train_rows(records: list[dict[str, Any]], origin: str = "") -> tuple[list[dict[str, Any]], int]:
    """DAPO-Math-17K rows with duplicate prompts dropped (first kept, order kept); returns ``(rows, n_dropped)``.

    Rows already in verl's format (a ``reward_model`` column, chat-format ``prompt``) are kept as they are, with
    ``data_source`` ``math_dapo``; rows with a bare question and answer are put in :data:`DAPO_TEMPLATE`.
    """
    if records and "reward_model" in records[0] and isinstance(records[0].get("prompt"), list):
        origin = origin or "train"
        kept, skipped = [], []
        for i, row in enumerate(records):
            problem = verl_row_problem(row)
            if problem:
                skipped.append(f"row {i} ({problem})")
            else:
                kept.append({**row, "data_source": DAPO_DATA_SOURCE})
        if not kept:
            raise InputError(f"{origin}: none of the {len(records)} rows is usable: {_listed(skipped)}")
        if skipped:
            print(f"{origin}: skipped {len(skipped)} of {len(records)} rows: {_listed(skipped)}", file=sys.stderr)
        rows = kept
    else:
        rows = eval_rows(records, DAPO_DATA_SOURCE, origin or "train")
        for row in rows:
            row["extra_info"]["split"] = "train"
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = json.dumps(row["prompt"], sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def verl_row_problem(row: dict[str, Any]) -> str:
    """Why a row already in verl's format cannot be trained on (``""`` when it can): its ``prompt`` must be a
    non-empty list of messages with non-blank string ``content``, its ``reward_model.ground_truth`` a non-blank
    string or a finite number."""
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        return f"prompt is {_kind(prompt)}" if not isinstance(prompt, list) else "prompt is an empty list"
    for message in prompt:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content.strip():
            return "a prompt message has no text content"
    reward_model = row.get("reward_model")
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if isinstance(truth, bool) or not isinstance(truth, (str, int, float)):
        return f"reward_model.ground_truth is {_kind(truth)}"
    if isinstance(truth, float) and not math.isfinite(truth):
        return f"reward_model.ground_truth is {truth}"
    if isinstance(truth, str) and not truth.strip():
        return "reward_model.ground_truth is blank"
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m verl_rhythm.data.prepare_math",
        description="Write DAPO-Math-17K and the AIME24/AIME25/AMC23/MATH500/OlympiadBench eval sets as verl parquet.",
        epilog="Local files (.parquet/.json/.jsonl) and dataset folders are read offline; a hub id needs a machine "
        "that reaches the Hugging Face hub.",
    )
    parser.add_argument("--out", default="~/data/rhythm_math", help="output folder")
    parser.add_argument("--train", default=DAPO_SOURCE, help="DAPO-Math-17K: local file/folder or hub id")
    parser.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help=f"local file/folder or hub id for one eval set ({', '.join(EVAL_SOURCES)}); repeatable",
    )
    parser.add_argument("--sets", default="train," + ",".join(EVAL_SOURCES), help="comma-separated sets to write")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not wanted:
        exit_with(parser.prog, f"--sets {args.sets!r}: names no set, so nothing would be written")
    unknown = sorted(set(wanted) - {"train", *EVAL_SOURCES})
    if unknown:
        exit_with(parser.prog, f"--sets: unknown {unknown}; choose from train, {', '.join(EVAL_SOURCES)}")
    overrides = dict(item.split("=", 1) for item in args.eval if "=" in item)
    bad = sorted(set(overrides) - set(EVAL_SOURCES)) + [i for i in args.eval if "=" not in i or not i.split("=", 1)[1]]
    if bad:
        exit_with(parser.prog, f"--eval: expected NAME=SOURCE with NAME in {', '.join(EVAL_SOURCES)}, got {bad}")
    if "train" in wanted and not args.train.strip():
        exit_with(parser.prog, "--train: empty source; give a local file/folder or a hub id")
    out = Path(args.out).expanduser()
    try:
        check_out_dir(out)
        written = _prepare(wanted, args.train, overrides)  # every set is read and checked before anything is written
        for fname, (rows, note) in written.items():
            path = write_parquet(rows, out / fname)
            print(f"{note} -> {path}")
    except (InputError, RuntimeError) as err:
        exit_with(parser.prog, err)
    except OSError as err:
        exit_with(parser.prog, f"{err.filename or out}: {err.strerror or err}")


def _prepare(wanted: list[str], train: str, overrides: dict[str, str]) -> dict[str, tuple[list[dict], str]]:
    """``file name -> (rows, summary line)`` of every wanted set."""
    written = {}
    if "train" in wanted:
        rows, dropped = train_rows(load_records(train), train)
        written[TRAIN_FILE] = rows, f"train: {len(rows)} problems ({dropped} duplicate rows dropped)"
    for name, default in EVAL_SOURCES.items():
        if name not in wanted:
            continue
        source = overrides.get(name, default.hub_id)
        records = load_records(source, default.split, default.config if source == default.hub_id else None)
        rows = eval_rows(records, name, source)
        written[f"{name}.parquet"] = rows, f"{name}: {len(rows)} problems"
    return written


if __name__ == "__main__":
    main()
