# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""A tiny random-weight Qwen2.5-VL (or Qwen3-VL) with its processor, built in-process and saved as an HF folder.

It is the vision-language model of the quickstart's ``images`` task and of the multimodal end-to-end tests: every
piece verl's multimodal path touches is the real transformers one (``Qwen2_5_VLForConditionalGeneration`` with its
vision tower and mRoPE, ``Qwen2VLImageProcessorPil``), only sized down (2 text layers of width 64, 2 vision blocks of
width 32; a 56x56 image is 16 patches of 14 px, merged 2x2 into 4 ``<|image_pad|>`` tokens). ``arch="qwen3_vl"``
gives the same sizes as a ``Qwen3VLForConditionalGeneration`` (patch 16, 64 px images, one deepstack layer).

The tokenizer is character-level (printable ASCII, ChatML's ``<|im_start|>``/``<|im_end|>`` and Qwen's vision
specials ``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``, ``<|video_pad|>``), with a chat template that
renders an image item of a message as ``<|vision_start|><|image_pad|><|vision_end|>``; the processor expands the
pad to one token per merged patch.

The processor is :class:`Qwen2_5_VLProcessor` (:class:`Qwen3VLProcessor`), transformers' class of that name without
a video processor:
transformers 5's stock ``Qwen2_5_VLProcessor`` cannot be built without torchvision (its ``Qwen2VLVideoProcessor``
requires it), and no torchvision build matches a CPU-only torch from the package index. The folder's
``processor_config.json`` maps ``AutoProcessor`` to it through ``auto_map``, so verl's
``verl/utils/tokenizer/tokenizer.py:hf_processor`` loads it with ``actor_rollout_ref.model.trust_remote_code=true``
and, since the class name is the stock one, binds ``Qwen2_5_VLModel.get_rope_index`` to it as for a real Qwen2.5-VL.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from transformers import Qwen2_5_VLProcessor as _StockQwen2_5_VLProcessor
from transformers import Qwen3VLProcessor as _StockQwen3VLProcessor

EOS = "<|im_end|>"
VISION_START = "<|vision_start|>"
IMAGE_PAD = "<|image_pad|>"
VISION_END = "<|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
SPECIALS = ["<unk>", "<|im_start|>", EOS, VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD]
VOCAB_SIZE = 128
PATCH = 14
MERGE = 2
IMAGE_PX = 56
"""Side of the images the processor sees (min = max pixels = 56²): 4x4 patches, 4 image tokens after the merge."""
ARCHS = {"qwen2_5_vl": (PATCH, IMAGE_PX), "qwen3_vl": (16, 64)}
"""Per architecture: ``(patch size, image side in px)``, both giving 4x4 patches, so 4 image tokens."""
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REMOTE_MODULE = "processing_rhythm_tiny_vlm"
"""The module written into the model folder for ``auto_map``: it re-exports :class:`Qwen2_5_VLProcessor`."""


class Qwen2_5_VLProcessor(_StockQwen2_5_VLProcessor):
    """transformers' Qwen2.5-VL processor for images and text only (no video processor, so no torchvision).

    Args:
        image_processor: a Qwen2-VL image processor (``Qwen2VLImageProcessorPil``).
        tokenizer: a tokenizer holding ``<|image_pad|>`` and ``<|video_pad|>``.
        chat_template: the Jinja chat template.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # the stock __init__ reads the image/video token ids from the tokenizer, then hands the sub-processors to
        # ProcessorMixin, which keeps those named in this signature (image_processor, tokenizer)
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None


class Qwen3VLProcessor(_StockQwen3VLProcessor):
    """transformers' Qwen3-VL processor for images and text only (no video processor, so no torchvision).

    Args:
        image_processor: a Qwen2-VL image processor (``Qwen2VLImageProcessorPil``, patch 16).
        tokenizer: a tokenizer holding Qwen's vision specials.
        chat_template: the Jinja chat template.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
        self.video_processor = None


PROCESSORS = {"qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}


def tiny_vlm_tokenizer():
    """A 128-token character-level fast tokenizer: printable ASCII, ChatML and Qwen's vision specials, fillers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = SPECIALS + chars
    vocab += [f"<f{i}>" for i in range(VOCAB_SIZE - len(vocab))]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    backend.add_special_tokens(SPECIALS)
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=EOS, pad_token=EOS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_vlm_processor(arch: str = "qwen2_5_vl"):
    """The image processor (4x4 patches per image: 56 px at patch 14, 64 px at patch 16; merge 2) and
    :func:`tiny_vlm_tokenizer` as one processor of ``arch`` (a key of :data:`ARCHS`)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if arch not in ARCHS:
        raise ValueError(f"tiny VLM: arch={arch!r} is not one of {sorted(ARCHS)}")
    patch, side = ARCHS[arch]
    pixels = side * side
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=patch,
        merge_size=MERGE,
        temporal_patch_size=2,
    )
    tokenizer = tiny_vlm_tokenizer()
    return PROCESSORS[arch](image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def save_tiny_vlm(path: str | Path, *, num_layers: int = 2, seed: int = 0, arch: str = "qwen2_5_vl") -> Path:
    """Save a random-weight Qwen2.5-VL (vocab 128, text width 64 with 4 heads / 2 KV heads and mRoPE sections
    (2, 3, 3); vision tower of 2 blocks, width 32, patch 14, merge 2) and :func:`tiny_vlm_processor` to ``path``;
    with ``arch="qwen3_vl"`` a Qwen3-VL of the same sizes (patch 16, deepstack from vision block 0).

    Args:
        path: the folder (created).
        num_layers: text decoder layers.
        seed: torch seed of the random weights.
        arch: ``qwen2_5_vl`` or ``qwen3_vl``.

    Returns:
        the folder, loadable with ``AutoModelForImageTextToText.from_pretrained`` and, with
        ``trust_remote_code=True``, ``AutoProcessor.from_pretrained``.
    """
    import torch
    import transformers as tf

    path = Path(path)
    processor = tiny_vlm_processor(arch)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    eos = ids[EOS]
    if arch == "qwen3_vl":
        config_cls, model_cls = tf.Qwen3VLConfig, tf.Qwen3VLForConditionalGeneration
        text_extra = dict(head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
        vision_extra = dict(patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0])
    else:
        config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
        text_extra = dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # 2 + 3 + 3 = head_dim 16 / 2
        vision_extra = dict(patch_size=PATCH, window_size=IMAGE_PX, fullatt_block_indexes=[1])
    config = config_cls(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=False,
            eos_token_id=eos,
            pad_token_id=eos,
            bos_token_id=None,
            **text_extra,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            spatial_merge_size=MERGE,
            temporal_patch_size=2,
            **vision_extra,
        ),
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        eos_token_id=eos,
        pad_token_id=eos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_cls(config)
    # random weights sample Qwen's vision markers as often as any token; verl's agent loop computes the mRoPE position
    # ids over prompt + response (Qwen2_5_VLModel.get_rope_index), where a sampled <|image_pad|> or <|vision_start|>
    # without an image stops it (StopIteration), so generation never samples them
    vision = [ids[t] for t in (VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD)]
    model.generation_config = tf.GenerationConfig(eos_token_id=eos, pad_token_id=eos, suppress_tokens=vision)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / f"{REMOTE_MODULE}.py").write_text(
        "# Copyright 2026 The verl-rhythm Authors\n# SPDX-License-Identifier: Apache-2.0\n"
        f'"""{Qwen2_5_VLProcessor.__doc__.splitlines()[0]}"""\n\n'
        "from verl_rhythm.tiny_vlm import Qwen2_5_VLProcessor, Qwen3VLProcessor  # noqa: F401\n"
    )
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            data = json.loads(file.read_text())
            data.setdefault("auto_map", {})["AutoProcessor"] = f"{REMOTE_MODULE}.{PROCESSORS[arch].__name__}"
            file.write_text(json.dumps(data, indent=2))
    return path
