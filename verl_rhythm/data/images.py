# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Counting dots: a synthetic image task for multimodal GRPO on a CPU (the quickstart's ``images`` task).

Each image is 56x56 px, white, with 1 to :data:`MAX_DOTS` black square dots drawn with PIL at random, non-touching
places; the question names the image (``Image 7.``: so no two prompts of a split are equal token for token) and asks
how many dots there are. Rows are verl's multimodal RL parquet format, as
``verl/utils/dataset/rl_dataset.py:RLHFDataset`` reads it: the prompt's user message holds an ``<image>``
placeholder and the row's ``images`` column holds the PNG bytes (``[{"bytes": ...}]``). Deterministic from a seed.

Reward (:func:`compute_score`, served by :mod:`verl_rhythm.data.reward` for ``data_source == "images"``): 1.0 when
the last integer of the response is the count, 0.1 when the response holds another integer, 0.0 otherwise.

:class:`ImageDataset` is the ``data.custom_cls`` to train with: ``RLHFDataset`` whose image extraction is PIL only.
verl's own extraction (``RLHFDataset._process_multi_modal_info``) imports ``qwen_vl_utils``, which imports
torchvision at module level, and no torchvision build matches a CPU-only torch from the package index.

Usage (offline, deterministic)::

    python -m verl_rhythm.data.images --out ~/data/images
"""

from __future__ import annotations

import argparse
import io
import os
import random
from typing import Any

from verl.utils.dataset.rl_dataset import RLHFDataset

from verl_rhythm.data.arithmetic import compute_score as _last_integer_score
from verl_rhythm.data.parquet import write_train_test

DATA_SOURCE = "images"
IMAGE_PX = 56
DOT_PX = 6
MAX_DOTS = 4
QUESTION = "How many dots? Answer with the number only."
"""The question after the image; the prompt names the image first (``Image 7.``), so every prompt is distinct."""
CUSTOM_CLS = ("pkg://verl_rhythm.data.images", "ImageDataset")
"""``data.custom_cls.path`` and ``data.custom_cls.name`` of the image-only dataset class."""


def make_problems(count: int, seed: int, max_dots: int = MAX_DOTS) -> list[list[tuple[int, int]]]:
    """``count`` images as lists of dot corners ``(x, y)``, 1 to ``max_dots`` dots each, no two touching."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 1 <= max_dots <= 9:
        raise ValueError(f"max_dots must be in [1, 9], got {max_dots}")
    rng = random.Random(seed)
    cells = IMAGE_PX // (DOT_PX * 2)  # a grid of cells, one dot at most per cell, jittered inside it
    out = []
    for _ in range(count):
        n = rng.randint(1, max_dots)
        chosen = rng.sample(range(cells * cells), n)
        dots = []
        for cell in sorted(chosen):
            cx, cy = (cell % cells) * DOT_PX * 2, (cell // cells) * DOT_PX * 2
            dots.append((cx + rng.randint(0, DOT_PX - 1), cy + rng.randint(0, DOT_PX - 1)))
        out.append(dots)
    return out


def render(dots: list[tuple[int, int]]) -> bytes:
    """The PNG bytes of a white ``IMAGE_PX``² RGB image with a black ``DOT_PX``² square at each corner of ``dots``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_PX, IMAGE_PX), "white")
    draw = ImageDraw.Draw(image)
    for x, y in dots:
        draw.rectangle([x, y, x + DOT_PX - 1, y + DOT_PX - 1], fill="black")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def question(index: int) -> str:
    """The text after the image of row ``index``: its name, then :data:`QUESTION`."""
    return f"Image {index}. {QUESTION}"


def to_row(dots: list[tuple[int, int]], split: str, index: int) -> dict[str, Any]:
    """One row of verl's multimodal RL parquet format: ``<image>`` in the prompt, the PNG in ``images``."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"<image>{question(index)}"}],
        "images": [{"bytes": render(dots)}],
        "ability": "counting",
        "reward_model": {"style": "rule", "ground_truth": str(len(dots))},
        "extra_info": {"split": split, "index": index},
    }


def compute_score(solution_str: str, ground_truth: Any) -> float:
    """1.0 if the last integer in ``solution_str`` is the count ``ground_truth``, 0.1 for another integer, else 0."""
    return _last_integer_score(solution_str, ground_truth)


def _image_of(item: dict):
    from PIL import Image

    image = item.get("image")
    if image is None and "bytes" in item:
        image = Image.open(io.BytesIO(item["bytes"]))
    elif isinstance(image, str | os.PathLike):
        image = Image.open(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"ImageDataset: an image item holds {type(image).__name__}, not a PIL image, bytes or a path")
    return image.convert("RGB")


class ImageDataset(RLHFDataset):
    """verl's ``RLHFDataset`` with a PIL-only image extraction (images as they are, resized by the processor).

    verl's agent loop extracts a prompt's images through the dataset class
    (``verl/experimental/agent_loop/agent_loop.py:AgentLoopBase.process_multi_modal_info`` calls
    ``dataset_cls.process_multi_modal_info``), so this class serves both the data loader and the rollout.
    Videos are refused: they need ``qwen_vl_utils``.
    """

    @classmethod
    def _process_multi_modal_info(cls, messages: list[dict], image_patch_size, config) -> tuple:
        """Returns ``(images or None, None, audios or None)``; images are RGB PIL images in message order."""
        images = []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for item in content:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "video":
                    raise ValueError(
                        "ImageDataset: videos are not supported (data.custom_cls); use verl's RLHFDataset with "
                        "qwen_vl_utils and torchvision installed"
                    )
                if item.get("type") == "image":
                    images.append(_image_of(item))
        return images or None, None, cls._extract_audio_info(messages)

    @classmethod
    async def process_vision_info(cls, messages: list[dict], image_patch_size, config) -> tuple:
        images, videos, _ = cls._process_multi_modal_info(messages, image_patch_size, config)
        return images, videos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m verl_rhythm.data.images",
        description="Write the counting-dots train/test parquet files (offline, deterministic).",
    )
    parser.add_argument("--out", default="~/data/images", help="output folder (train.parquet, test.parquet)")
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--test-size", type=int, default=32)
    parser.add_argument("--max-dots", type=int, default=MAX_DOTS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_train_test(
        parser,
        args,
        lambda count, seed: make_problems(count, seed, args.max_dots),
        to_row,
        knob="--max-dots",
        noun="images",
    )


if __name__ == "__main__":
    main()
