# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Tiny random vision-language models built in-process (no hub) and prompts with images, for the capture's tests.

Qwen2.5-VL and Qwen3-VL with a text decoder of ``num_layers`` layers (hidden 64, 4 query / 2 kv heads, head dim 16,
mRoPE sections summing to 8) and a two-block vision tower (patch 4, spatial merge 2, so a ``(1, 4, 4)`` image grid
gives 16 patches and 4 image placeholder tokens in the prompt). Token ids 0-99 are text, 100-103 the vision markers.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch

VLM_ARCHS = ("qwen2_5_vl", "qwen3_vl")

IMAGE_TOKEN_ID = 101
VIDEO_TOKEN_ID = 102
VISION_START_TOKEN_ID = 100
VISION_END_TOKEN_ID = 103
TEXT_VOCAB = 100
"""Ids below this are ordinary text tokens."""


MODELING_MODULES = (
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
    "transformers.models.qwen3_vl.modeling_qwen3_vl",
)
"""The transformers modules whose classes verl's engine patches for the whole process
(``verl/models/transformers/monkey_patch.py:apply_monkey_patch``: the models' and the attention's ``forward``)."""


def _class_methods() -> dict[tuple[type, str], object]:
    """Every function defined on a class of :data:`MODELING_MODULES`, by ``(class, name)``."""
    found = {}
    for name in MODELING_MODULES:
        for cls in vars(importlib.import_module(name)).values():
            if isinstance(cls, type) and cls.__module__ == name:
                found.update({(cls, k): v for k, v in vars(cls).items() if callable(v)})
    return found


_TRANSFORMERS_METHODS = _class_methods()
"""The methods as transformers defines them, read when this module is first imported (``tests/conftest.py`` imports
it before any test builds a verl engine)."""


@contextlib.contextmanager
def transformers_own_classes() -> Iterator[None]:
    """transformers' own methods on the Qwen2.5-VL / Qwen3-VL classes for the block, verl's patches (if any) back
    afterwards: a dense reference computed after a verl engine was built in this process is still transformers' eager
    model (verl's patched forwards return no attention maps).

    Raises:
        RuntimeError: this module was first imported after verl had patched the classes (no stock methods to restore).
    """
    patched = [f"{c.__name__}.{n}" for (c, n), f in _TRANSFORMERS_METHODS.items() if _from_verl(f)]
    if patched:
        raise RuntimeError(
            f"verl_rhythm.testing.vlm was imported after verl patched {patched}: import it before building a verl "
            "engine (tests/conftest.py does)"
        )
    current = _class_methods()
    try:
        for (cls, name), fn in _TRANSFORMERS_METHODS.items():
            setattr(cls, name, fn)
        yield
    finally:
        for (cls, name), fn in current.items():
            setattr(cls, name, fn)


def _from_verl(fn) -> bool:
    return str(getattr(fn, "__module__", "") or "").startswith("verl.")


def vlm_config(arch: str, num_layers: int = 6, attn_implementation: str = "eager"):
    """The transformers config of a tiny random ``arch`` (one of :data:`VLM_ARCHS`), every part (vision tower and
    text decoder) set to ``attn_implementation``."""
    import transformers as tf

    text = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64)  # fmt: skip
    ids = dict(image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID,
               vision_start_token_id=VISION_START_TOKEN_ID, vision_end_token_id=VISION_END_TOKEN_ID)  # fmt: skip
    if arch == "qwen2_5_vl":
        vision.update(window_size=16, fullatt_block_indexes=[1])
        cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    elif arch == "qwen3_vl":
        text.update(head_dim=16)
        vision.update(num_position_embeddings=16, deepstack_visual_indexes=[0])
        cfg = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    else:
        raise ValueError(f"unknown vision-language arch {arch!r}; choose from {VLM_ARCHS}")
    cfg._attn_implementation = attn_implementation
    cfg.text_config._attn_implementation = attn_implementation
    cfg.vision_config._attn_implementation = attn_implementation
    return cfg


def vlm_model(arch: str, num_layers: int = 6, attn_implementation: str = "eager", seed: int = 0):
    """A tiny random ``arch`` in eval mode, fp32, deterministic from ``seed``; the text decoder's q/k projections are
    scaled x4 so its attention is far from uniform (as :func:`tests.models.tiny_model` does)."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(vlm_config(arch, num_layers, attn_implementation))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return model.eval()


def image_prompt(prompt_len: int, response_len: int, *, grid=(1, 4, 4), image_at: int = 2, seed: int = 0):
    """One sequence ``prompt + response`` whose prompt holds one image, and that image's pixels.

    Args:
        prompt_len: text tokens of the prompt besides the image (the image's start/end markers and placeholders
            come on top, at ``image_at``).
        response_len: response tokens.
        grid: the image's ``(t, h, w)`` patch grid (``image_grid_thw``); ``t * h * w / 4`` placeholder tokens.
        image_at: where in the prompt the image starts.
        seed: for the text tokens and the pixels.

    Returns:
        ``(input_ids (L,), pixel_values (t*h*w, 3*2*4*4), image_grid_thw (1, 3), response_len)``.
    """
    g = torch.Generator().manual_seed(seed)
    t, h, w = grid
    placeholders = t * h * w // 4
    text = torch.randint(0, TEXT_VOCAB, (prompt_len + response_len,), generator=g)
    image = torch.tensor([VISION_START_TOKEN_ID] + [IMAGE_TOKEN_ID] * placeholders + [VISION_END_TOKEN_ID])
    ids = torch.cat([text[:image_at], image, text[image_at:]])
    pixels = torch.randn(t * h * w, 3 * 2 * 4 * 4, generator=g)
    return ids, pixels, torch.tensor([list(grid)]), response_len


def mrope_position_ids(model, input_ids: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
    """verl's ``(4, L)`` position ids of one unpadded sequence: row 0 the text positions ``0..L-1``, rows 1-3 the
    model's mRoPE (t, h, w) positions, as verl's agent loop builds them
    (``verl/experimental/agent_loop/agent_loop.py``: the model's ``get_rope_index`` bound to the processor, then
    ``torch.cat((text_position_ids, vision_position_ids))``).

    Args:
        model: a :func:`vlm_model` (its ``model.get_rope_index``).
        input_ids: ``(L,)`` with the image placeholders.
        image_grid_thw: ``(n_images, 3)``.
    """
    ids = input_ids[None]
    mm_token_type_ids = (ids == IMAGE_TOKEN_ID).long()
    vision, _ = model.model.get_rope_index(ids, mm_token_type_ids, image_grid_thw=image_grid_thw,
                                           attention_mask=torch.ones_like(ids))  # fmt: skip
    return torch.cat([torch.arange(ids.shape[1])[None], vision[:, 0]])


def image_sequences(model, specs, seed: int = 0):
    """Several :func:`image_prompt` sequences with their ``(4, L_i)`` position ids.

    Args:
        model: a :func:`vlm_model`.
        specs: ``(prompt_len, response_len)`` per sequence, or ``(prompt_len, response_len, grid)``.

    Returns:
        a list of dicts with ``input_ids (L,)``, ``position_ids (4, L)``, ``pixel_values``, ``image_grid_thw (1, 3)``
        and ``response_len``.
    """
    out = []
    for i, spec in enumerate(specs):
        prompt_len, response_len, *grid = spec
        ids, pixels, thw, r = image_prompt(prompt_len, response_len, grid=tuple(grid[0]) if grid else (1, 4, 4),
                                           seed=seed + i)  # fmt: skip
        out.append(dict(input_ids=ids, position_ids=mrope_position_ids(model, ids, thw), pixel_values=pixels,
                        image_grid_thw=thw, response_len=r))  # fmt: skip
    return out


def packed_inputs(sequences) -> dict:
    """The model inputs of verl's packed row (``use_remove_padding``): ``input_ids (1, T)``, ``position_ids
    (4, 1, T)`` and the micro-batch's images concatenated in sequence order."""
    return dict(
        input_ids=torch.cat([s["input_ids"] for s in sequences])[None],
        position_ids=torch.cat([s["position_ids"] for s in sequences], 1)[:, None],
        pixel_values=torch.cat([s["pixel_values"] for s in sequences]),
        image_grid_thw=torch.cat([s["image_grid_thw"] for s in sequences]),
    )


def padded_inputs(sequences, pad_token_id: int = 0) -> dict:
    """The model inputs of verl's right-padded batch (``use_remove_padding=False``): ``input_ids (B, T)``,
    ``attention_mask (B, T)`` and ``position_ids (4, B, T)`` padded with 0 (``FSDPEngineWithLMHead.
    prepare_model_inputs``: ``to_padded_tensor(..., output_size=(B, 4, T)).transpose(0, 1)``), and the images."""
    width = max(len(s["input_ids"]) for s in sequences)
    b = len(sequences)
    ids = torch.full((b, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    pos = torch.zeros(b, 4, width, dtype=torch.long)
    for i, s in enumerate(sequences):
        n = len(s["input_ids"])
        ids[i, :n], mask[i, :n], pos[i, :, :n] = s["input_ids"], 1, s["position_ids"]
    return dict(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos.transpose(0, 1),
        pixel_values=torch.cat([s["pixel_values"] for s in sequences]),
        image_grid_thw=torch.cat([s["image_grid_thw"] for s in sequences]),
    )


def vlm_log_prob_batch(sequences, *, capture, hole: int = 2, **engine_settings):
    """:func:`verl_rhythm.testing.engine.log_prob_batch` for :func:`image_sequences`: nested ``(bsz, 4, L_i)``
    position ids and the per-sample ``multi_modal_inputs`` (``pixel_values``, ``image_grid_thw``), as verl's agent
    loop stores them in TransferQueue (``verl/trainer/ppo/v1/agent_loop_tq.py``); ``hole`` tokens masked out in the
    middle of each response.

    Returns:
        ``(batch, triples)``: the TensorDict and the ``(prompt, response, response_mask)`` per sequence.
    """
    from verl.utils import tensordict_utils as tu

    from verl_rhythm.testing.engine import log_prob_batch

    triples = []
    for s in sequences:
        r = s["response_len"]
        mask = torch.ones(r, dtype=torch.long)
        mask[r // 2 : r // 2 + hole] = 0
        triples.append((s["input_ids"][:-r], s["input_ids"][-r:], mask))
    batch = log_prob_batch(triples, capture=capture, **engine_settings)
    batch["position_ids"] = torch.nested.as_nested_tensor([s["position_ids"] for s in sequences], layout=torch.jagged)
    tu.assign_non_tensor_stack(batch, "multi_modal_inputs", [
        {"pixel_values": s["pixel_values"], "image_grid_thw": s["image_grid_thw"]} for s in sequences
    ])  # fmt: skip
    return batch, triples


def vlm_dense_rhythm(model, sequences, triples, cfg) -> list:
    """The dense reference of :func:`vlm_log_prob_batch`'s sequences: each alone through ``model`` (eager, with its
    image and position ids), then :mod:`verl_rhythm.testing.dense` on the text decoder's maps (its own layer choice
    from ``text_config``). Returns one :class:`~verl_rhythm.testing.dense.DenseRhythm` per sequence."""
    from verl_rhythm.testing import dense

    layers = dense.model_layers(model.config.text_config, cfg.layers)
    maps, masks, heads = [], [], None
    for s, (prompt, _, mask) in zip(sequences, triples, strict=True):
        n = len(s["input_ids"])
        with torch.no_grad(), transformers_own_classes():
            attentions = model(input_ids=s["input_ids"][None], position_ids=s["position_ids"][:, None],
                               pixel_values=s["pixel_values"], image_grid_thw=s["image_grid_thw"],
                               output_attentions=True, use_cache=False).attentions  # fmt: skip
        m, heads = dense.attention_maps_for_sequence(attentions, layers, 0, torch.arange(n))
        maps.append(m)
        masks.append(torch.cat([torch.zeros(len(prompt), dtype=torch.bool), mask.bool()]))
    return dense.rhythm_for_sequences(maps, masks, heads or [], cfg)
