# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl's ``main_ppo`` with a vision-language model on the CPU backend: the tiny random Qwen2.5-VL and Qwen3-VL
(:mod:`verl_rhythm.tiny_vlm`) counting dots in images (:mod:`verl_rhythm.data.images`).

Every step is verl's multimodal path: ``RLHFDataset`` reading the ``images`` column (through
:class:`~verl_rhythm.data.images.ImageDataset`, the PIL-only image extraction), the agent loop tokenising with the
processor and computing the 4-row mRoPE position ids, the ``hf`` rollout generating with ``pixel_values``, verl's
FSDP2 engine running the vision tower and the text decoder on ``multi_modal_inputs``, the update. Plain GRPO first
(verl's multimodal path alone), then ``adv_estimator=rhythm``: what the actor was trained on is read back from the
dumped update batches and checked against verl's GRPO advantage (rewards re-scored here from the decoded responses)
times γ recomputed from the captured WAAD/FAI.
"""

import re

import numpy as np
import pytest
import torch
from test_main_ppo_on_cpu import RHYTHM_KEYS, SMALL, assert_grpo_times_gamma, pad
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from verl_rhythm.data import images
from verl_rhythm.data.parquet import write_parquet
from verl_rhythm.testing.main_ppo import run_main_ppo
from verl_rhythm.tiny_vlm import ARCHS, IMAGE_PAD, save_tiny_vlm, tiny_vlm_tokenizer

pytestmark = pytest.mark.slow

VLM = [
    *SMALL,
    f"data.custom_cls.path={images.CUSTOM_CLS[0]}",
    f"data.custom_cls.name={images.CUSTOM_CLS[1]}",
    "actor_rollout_ref.model.trust_remote_code=true",  # the folder's image-only processor (auto_map)
    "trainer.total_training_steps=2",
]
NAME = re.compile(r"Image (\d+)\. ")
IMAGE_TOKENS = 4
"""``<|image_pad|>`` tokens of one image: 4x4 patches, merged 2x2."""


@pytest.fixture(scope="module", params=sorted(ARCHS))
def setup(request, tmp_path_factory):
    """``(root, model folder, data folder, problems)``: the tiny Qwen2.5-VL or Qwen3-VL and the counting-dots data."""
    root = tmp_path_factory.mktemp(f"main_ppo_{request.param}")
    model = save_tiny_vlm(root / "model", arch=request.param)
    problems = images.make_problems(64, seed=0)
    data = root / "data"
    write_parquet([images.to_row(p, "train", i) for i, p in enumerate(problems)], data / "train.parquet")
    write_parquet([images.to_row(p, "test", i) for i, p in enumerate(problems[:8])], data / "test.parquet")
    return root, model, data, problems


def grpo_reference(dump: dict, problems: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """verl's GRPO advantage for a dumped update batch, every reward re-scored from the decoded response against
    the dot count of the image the prompt names.

    Returns:
        ``(grpo (bs, T), advantages used by the update (bs, T), response_mask (bs, T))``.
    """
    tokenizer = tiny_vlm_tokenizer()
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    mask = pad(dump["response_mask"]).bool()
    rewards = pad(dump["rm_scores"]).float()
    groups, index = {}, []
    for i, (prompt, response) in enumerate(zip(dump["prompts"], dump["responses"], strict=True)):
        assert int((prompt == pad_id).sum()) == IMAGE_TOKENS, "the prompt does not hold the image's tokens"
        count = len(problems[int(NAME.search(tokenizer.decode(prompt.tolist(), skip_special_tokens=True))[1])])
        text = tokenizer.decode(response[mask[i, : len(response)]].tolist(), skip_special_tokens=True)
        assert rewards[i].sum().item() == pytest.approx(images.compute_score(text, count)), "not the task's reward"
        index.append(groups.setdefault(tuple(prompt.tolist()), len(groups)))
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask.float(), np.array(index), norm_adv_by_std_in_grpo=True)
    return grpo, pad(dump["advantages"]).float(), mask


def _check_multimodal_rows(dumps: list[dict]) -> None:
    """The actor trained on mRoPE rows: position ids of 4 rows per sequence (text + temporal/height/width)."""
    for dump in dumps:
        for row, ids in zip(dump["position_ids"], dump["input_ids"], strict=True):
            assert row.shape[0] == 4 and row.shape[-1] == ids.shape[-1], tuple(row.shape)


@pytest.fixture(scope="module")
def grpo_run(setup):
    root, model, data, _ = setup
    return run_main_ppo(root / "grpo", model, data, [*VLM, "algorithm.adv_estimator=grpo"], timeout=1500)


def test_plain_grpo_trains_the_vlm_on_images(setup, grpo_run):
    assert grpo_run.returncode == 0, grpo_run.log[-6000:]
    assert grpo_run.steps == [1, 2]
    assert not [k for _, m in grpo_run.metrics for k in m if k.startswith("rhythm/")]
    assert len(grpo_run.dumps) == 2
    _check_multimodal_rows(grpo_run.dumps)
    for dump in grpo_run.dumps:
        grpo, used, mask = grpo_reference(dump, setup[3])
        assert torch.allclose(used, grpo * mask, atol=1e-6)


@pytest.fixture(scope="module")
def rhythm_run(setup):
    root, model, data, _ = setup
    return run_main_ppo(root / "rhythm", model, data, [*VLM, "algorithm.adv_estimator=rhythm"], timeout=1500)


def test_rhythm_trains_the_vlm_on_grpo_times_gamma(setup, rhythm_run):
    assert rhythm_run.returncode == 0, rhythm_run.log[-6000:]
    assert rhythm_run.steps == [1, 2]
    for step, m in rhythm_run.metrics:
        missing = [k for k in RHYTHM_KEYS if k not in m]
        assert not missing, f"step {step} lacks {missing}"
        assert m["rhythm/gamma_mean"] >= 1.0 and m["rhythm/capture_s"] > 0
    assert len(rhythm_run.dumps) == 2
    _check_multimodal_rows(rhythm_run.dumps)
    assert_grpo_times_gamma(rhythm_run.dumps, reference=lambda dump: grpo_reference(dump, setup[3]))
