# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Where the analysed prompts come from: the bundled problems, the command line, or a file; and the chat template.

The bundled problems (``verl_rhythm/data/problems.json``) are GSM8K-style word problems written for this tool.
Each gets the instruction suffix that verl's own GSM8K preprocessing appends
(``examples/data_preprocess/gsm8k.py`` in verl's git tree), so the prompts look like an RL training prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from verl_rhythm.inputs import InputError, parse_json, parse_jsonl, read_text

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, used when the tokenizer brings no chat template of its own."""


@dataclass(frozen=True)
class Problem:
    """One prompt to analyse.

    Attributes:
        id: a short name shown in the report.
        text: the user message (the question plus any instruction).
        answer: the reference answer, or ``None`` when unknown (prompts from the command line).
    """

    id: str
    text: str
    answer: str | None = None


def bundled_problems() -> list[Problem]:
    """The problems shipped in ``verl_rhythm/data/problems.json``, each with the GSM8K instruction appended."""
    raw = resources.files("verl_rhythm").joinpath("data/problems.json").read_text(encoding="utf-8")
    data = json.loads(raw)
    suffix = data.get("instruction", "")
    return [Problem(p["id"], f"{p['question']} {suffix}".strip(), p.get("answer")) for p in data["problems"]]


def problems_from_file(path: str | Path) -> list[Problem]:
    """Prompts from a file (UTF-8; a byte-order mark is accepted).

    Formats, by extension: ``.json`` — a list of strings or of objects with a ``question`` (or ``prompt``) key and
    an optional ``answer``/``id``, or an object with such a list under ``problems``; ``.jsonl`` — one such object
    (or string) per line; anything else — plain text, one prompt per non-empty line.

    Raises:
        InputError: the file is missing or not UTF-8, malformed JSON (file and line named), holds no prompt, or an
            entry has neither a non-blank ``question`` nor ``prompt`` string (file and entry, or line, named).
    """
    path = Path(path)
    text = read_text(path)
    if path.suffix == ".json":
        data = parse_json(text, path)
        entries = data["problems"] if isinstance(data, dict) and "problems" in data else data
        if not isinstance(entries, list):
            raise InputError(f"{path}: expected a JSON list of prompts (or an object with a 'problems' list)")
        where = [f"{path}: entry {i}" for i in range(len(entries))]
    elif path.suffix == ".jsonl":
        numbered = parse_jsonl(text, path)
        entries = [entry for _, entry in numbered]
        where = [f"{path}:{n}" for n, _ in numbered]
    else:
        numbered = [(n, line.strip()) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
        entries = [line for _, line in numbered]
        where = [f"{path}:{n}" for n, _ in numbered]
    problems = [_entry(e, i, w) for i, (e, w) in enumerate(zip(entries, where, strict=True))]
    if not problems:
        raise InputError(f"{path}: no prompt found")
    return problems


def problems_from_strings(prompts: list[str]) -> list[Problem]:
    """Prompts given on the command line, used verbatim.

    Raises:
        InputError: a prompt is empty or only whitespace (the ``--prompt`` is named by its position).
    """
    for i, p in enumerate(prompts):
        if not p.strip():
            raise InputError(f"--prompt #{i + 1} is empty; give the text of the prompt")
    return [Problem(f"prompt-{i}", p) for i, p in enumerate(prompts)]


def chat_prompt(tokenizer, text: str, use_chat_template: bool = True) -> list[int]:
    """Token ids of the model input for one user message.

    Args:
        tokenizer: a transformers tokenizer.
        text: the user message.
        use_chat_template: wrap the message as a chat turn (the tokenizer's own template, or ChatML when it has
            none) and open the assistant turn; ``False`` feeds the raw text (base models).

    Returns:
        the prompt's token ids.
    """
    if not use_chat_template:
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])
    template = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], chat_template=template, add_generation_prompt=True, tokenize=True
    )
    if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _entry(entry, i: int, where: str) -> Problem:
    if isinstance(entry, str):
        if not entry.strip():
            raise InputError(f"{where}: the prompt is empty")
        return Problem(f"prompt-{i}", entry)
    if isinstance(entry, dict):
        text = entry.get("question", entry.get("prompt"))
        if isinstance(text, str) and text.strip():
            answer = entry.get("answer")
            return Problem(str(entry.get("id", f"prompt-{i}")), text, None if answer is None else str(answer))
    raise InputError(f"{where}: has no non-empty 'question' or 'prompt' string")
