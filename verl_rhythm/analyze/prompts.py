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
    """Prompts from a file.

    Formats, by extension: ``.json`` — a list of strings or of objects with a ``question`` (or ``prompt``) key and
    an optional ``answer``/``id``, or an object with such a list under ``problems``; ``.jsonl`` — one such object
    (or string) per line; anything else — plain text, one prompt per non-empty line.

    Raises:
        ValueError: the file holds no prompt, or an entry has neither ``question`` nor ``prompt``.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        entries = data["problems"] if isinstance(data, dict) and "problems" in data else data
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of prompts (or an object with a 'problems' list)")
    elif path.suffix == ".jsonl":
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        entries = [line.strip() for line in text.splitlines() if line.strip()]
    problems = [_entry(e, i, path) for i, e in enumerate(entries)]
    if not problems:
        raise ValueError(f"{path}: no prompt found")
    return problems


def problems_from_strings(prompts: list[str]) -> list[Problem]:
    """Prompts given on the command line, used verbatim."""
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


def _entry(entry, i: int, path: Path) -> Problem:
    if isinstance(entry, str):
        return Problem(f"prompt-{i}", entry)
    if isinstance(entry, dict):
        text = entry.get("question", entry.get("prompt"))
        if isinstance(text, str) and text.strip():
            answer = entry.get("answer")
            return Problem(str(entry.get("id", f"prompt-{i}")), text, None if answer is None else str(answer))
    raise ValueError(f"{path}: entry {i} has no 'question' or 'prompt' string")
