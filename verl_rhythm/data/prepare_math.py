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

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_rhythm.data.parquet import write_parquet

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
        FileNotFoundError: ``source`` looks like a local path (``/``, ``.``, ``~`` or a file suffix) but is absent.
        RuntimeError: the hub could not be reached (message says to pass a local file instead).
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return data["data"] if isinstance(data, dict) and "data" in data else data
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .parquet, .json or .jsonl)")
    if not path.is_dir() and (source.startswith(("/", ".", "~")) or path.suffix in (".parquet", ".json", ".jsonl")):
        raise FileNotFoundError(f"{source}: no such file or folder")
    import datasets

    try:
        return list(datasets.load_dataset(str(path) if path.is_dir() else source, config, split=split))
    except Exception as err:  # the hub's errors vary by version; the advice is the same
        raise RuntimeError(
            f"could not load {source!r} (split {split!r}) with datasets.load_dataset: {err}. Without hub access, "
            "download the set elsewhere and pass the local file (.parquet/.json/.jsonl)."
        ) from err


def pick_field(row: dict[str, Any], candidates: tuple[str, ...], what: str, origin: str) -> str:
    """The first of ``candidates`` present in ``row`` (with a string or list value); ValueError listing columns."""
    for name in candidates:
        if name in row and isinstance(row[name], (str, int, float, list)):
            if name == "prompt" and not isinstance(row[name], str):
                continue  # verl's chat-format prompt, not a bare question
            return name
    raise ValueError(f"{origin}: no {what} column among {list(candidates)}; the rows have {sorted(row)}")


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


def eval_rows(records: list[dict[str, Any]], name: str, origin: str = "") -> list[dict[str, Any]]:
    """verl rows of one evaluation set, prompts in :data:`DAPO_TEMPLATE`, ``data_source`` = ``name``."""
    if not records:
        raise ValueError(f"{origin or name}: no rows")
    q_field = pick_field(records[0], QUESTION_FIELDS, "question", origin or name)
    a_field = pick_field(records[0], ANSWER_FIELDS, "answer", origin or name)
    return [
        {
            "data_source": name,
            "prompt": [{"role": "user", "content": DAPO_TEMPLATE.format(problem=str(row[q_field]).strip())}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": clean_answer(row[a_field], a_field)},
            "extra_info": {"split": "test", "index": i},
        }
        for i, row in enumerate(records)
    ]


def train_rows(records: list[dict[str, Any]], origin: str = "") -> tuple[list[dict[str, Any]], int]:
    """DAPO-Math-17K rows with duplicate prompts dropped (first kept, order kept); returns ``(rows, n_dropped)``.

    Rows already in verl's format (a ``reward_model`` column, chat-format ``prompt``) are kept as they are, with
    ``data_source`` ``math_dapo``; rows with a bare question and answer are put in :data:`DAPO_TEMPLATE`.
    """
    if records and "reward_model" in records[0] and isinstance(records[0].get("prompt"), list):
        rows = [{**row, "data_source": DAPO_DATA_SOURCE} for row in records]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
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
    wanted = [s for s in args.sets.split(",") if s]
    unknown = sorted(set(wanted) - {"train", *EVAL_SOURCES})
    if unknown:
        parser.error(f"--sets: unknown {unknown}; choose from train, {', '.join(EVAL_SOURCES)}")
    overrides = dict(item.split("=", 1) for item in args.eval if "=" in item)
    bad = sorted(set(overrides) - set(EVAL_SOURCES)) + [item for item in args.eval if "=" not in item]
    if bad:
        parser.error(f"--eval: expected NAME=SOURCE with NAME in {', '.join(EVAL_SOURCES)}, got {bad}")
    out = Path(args.out).expanduser()
    if "train" in wanted:
        rows, dropped = train_rows(load_records(args.train), args.train)
        path = write_parquet(rows, out / TRAIN_FILE)
        print(f"train: {len(rows)} problems ({dropped} duplicate rows dropped) -> {path}")
    for name, default in EVAL_SOURCES.items():
        if name not in wanted:
            continue
        source = overrides.get(name, default.hub_id)
        records = load_records(source, default.split, default.config if source == default.hub_id else None)
        path = write_parquet(eval_rows(records, name, source), out / f"{name}.parquet")
        print(f"{name}: {len(records)} problems -> {path}")


if __name__ == "__main__":
    main()
