# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The pieces of multimodal GRPO on CPU, one process each: the tiny Qwen2.5-VL loaded through verl's own
``hf_processor``, the counting-dots parquet read by verl's ``RLHFDataset`` (through ``ImageDataset``), and the
``hf`` rollout server generating with the images."""

import asyncio
import io

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from verl_rhythm.data import images
from verl_rhythm.data.parquet import write_parquet
from verl_rhythm.tiny_vlm import ARCHS, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START, save_tiny_vlm


@pytest.fixture(scope="module", params=sorted(ARCHS))
def vlm(request, tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "model", arch=request.param)


@pytest.fixture(scope="module")
def processor(vlm):
    from verl.utils.tokenizer import hf_processor

    return hf_processor(str(vlm), trust_remote_code=True)


def _prompt_ids(processor, image, text):
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    raw = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=[raw], images=[image], return_tensors="pt")


def test_verls_hf_processor_loads_the_tiny_vlm_as_a_qwen_vl(vlm, processor):
    """verl binds Qwen2.5-VL's (Qwen3-VL's) get_rope_index to the processor by class name; a None here would mean
    verl treats the model as text-only."""
    from transformers import AutoConfig

    arch = AutoConfig.from_pretrained(vlm).model_type
    want = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}[arch]
    assert processor is not None and type(processor).__name__ == want
    assert hasattr(processor, "get_rope_index")
    image = Image.open(io.BytesIO(images.render(images.make_problems(1, seed=0)[0])))
    inputs = _prompt_ids(processor, image, images.question(0))
    pad_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]  # the 56 px image resized to 4x4 patches
    assert int((inputs["input_ids"] == pad_id).sum()) == 4  # merged 2x2


def test_rl_dataset_reads_the_images_parquet(tmp_path, processor):
    problems = images.make_problems(6, seed=1)
    path = write_parquet([images.to_row(p, "train", i) for i, p in enumerate(problems)], tmp_path / "train.parquet")
    config = OmegaConf.create({"max_prompt_length": 128, "filter_overlong_prompts": True, "cache_dir": str(tmp_path)})
    dataset = images.ImageDataset([str(path)], processor.tokenizer, config, processor=processor)
    assert len(dataset) == 6  # none filtered: each prompt, image tokens included, fits 128 tokens
    row = dataset[2]
    found, _, _ = images.ImageDataset._process_multi_modal_info(row["raw_prompt"], 14, config)
    want = Image.open(io.BytesIO(images.render(problems[2]))).convert("RGB")
    assert len(found) == 1 and found[0].tobytes() == want.tobytes()
    assert row["reward_model"]["ground_truth"] == str(len(problems[2]))
    video = [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"}]}]
    with pytest.raises(ValueError, match="videos are not supported"):
        images.ImageDataset._process_multi_modal_info(video, 14, config)


@pytest.fixture
def stock_vlm_classes():
    """transformers' own Qwen VL forwards for the test: the CPU backend's rollout server runs ``generate`` in a Ray
    actor of its own, where verl never patches them; in this pytest process an earlier test's verl engine may have
    (``verl/models/transformers/monkey_patch.py`` replaces the classes' ``forward`` for the whole process)."""
    from verl_rhythm.testing.vlm import transformers_own_classes

    with transformers_own_classes():
        yield


def test_the_hf_rollout_generates_with_the_images(vlm, processor, stock_vlm_classes):
    """Requests batched into one ``generate`` get the log-probs each gets alone (each prompt sees its own image, in
    batch order), and those depend on the image (pixel_values reached generate); a prompt whose image tokens do not
    match its images is refused."""
    from verl_rhythm.backends.cpu.rollout import HFRolloutServer

    server = HFRolloutServer(
        str(vlm), prompt_length=128, response_length=6, max_model_len=None, max_batch_size=8, trust_remote_code=True
    )
    one, two = (Image.open(io.BytesIO(images.render(d))).convert("RGB") for d in ([(3, 3)], [(3, 3), (40, 40)]))
    ids = _prompt_ids(processor, one, images.question(0))["input_ids"][0].tolist()
    greedy = {"temperature": 0.0, "logprobs": True}

    async def together():
        return await asyncio.gather(
            server.generate("a", ids, greedy, image_data=[one]), server.generate("b", ids, greedy, image_data=[two])
        )

    a, b = asyncio.run(together())
    alone_a = asyncio.run(server.generate("c", ids, greedy, image_data=[one]))
    alone_b = asyncio.run(server.generate("d", ids, greedy, image_data=[two]))
    for batched, alone in ((a, alone_a), (b, alone_b)):
        assert batched.token_ids == alone.token_ids
        assert batched.log_probs == pytest.approx(alone.log_probs, abs=1e-5)
    assert not torch.allclose(torch.tensor(a.log_probs[:1]), torch.tensor(b.log_probs[:1]), atol=1e-6)
    with pytest.raises(ValueError, match="image tokens"):
        asyncio.run(server.generate("e", ids, greedy, image_data=[one, two]))
    # sampled responses never hold a vision marker (verl's agent loop could not compute their mRoPE position ids)
    vision = {processor.tokenizer.convert_tokens_to_ids(t) for t in (VISION_START, IMAGE_PAD, VISION_END, VIDEO_PAD)}

    async def sampled():
        sampling = {"temperature": 1.0, "logprobs": False}
        return await asyncio.gather(*(server.generate(str(i), ids, sampling, image_data=[one]) for i in range(16)))

    tokens = [t for out in asyncio.run(sampled()) for t in out.token_ids]
    assert len(tokens) >= 16 and not vision & set(tokens)
    with pytest.raises(ValueError, match="video"):
        asyncio.run(server.generate("f", ids, greedy, video_data=[one]))


def test_the_data_set_is_deterministic_and_scored_by_the_recipes_reward():
    from verl_rhythm.data.reward import compute_score

    a, b = images.make_problems(16, seed=3), images.make_problems(16, seed=3)
    assert a == b and a != images.make_problems(16, seed=4)
    assert all(1 <= len(dots) <= images.MAX_DOTS for dots in a)
    assert images.render(a[0]) == images.render(b[0])
    row = images.to_row(a[0], "train", 0)
    assert compute_score("images", f"I see {len(a[0])}", row["reward_model"]["ground_truth"])["score"] == 1.0
    assert compute_score("images", "I see 99", row["reward_model"]["ground_truth"])["score"] == 0.1
    assert compute_score("images", "none", row["reward_model"]["ground_truth"])["score"] == 0.0
