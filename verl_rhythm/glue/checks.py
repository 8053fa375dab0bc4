# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Start-up checks of a rhythm run, before the first rollout: every unsupported setting fails here, by key.

Called by the trainer glue before any worker exists: the v1 trainer's ``PPOTrainer.init`` (every
``trainer.v1.trainer_mode``; :mod:`verl_rhythm.glue.trainer_base`) and the legacy ``RayPPOTrainer.__init__``
(``trainer.use_v1=false`` and recipe trainers; :mod:`verl_rhythm.glue.ray_trainer`). No trainer or mode is refused
as such: each runs the actor's old-log-prob pass, where the statistics are computed, unless
``algorithm.rollout_correction.bypass_mode`` skips it (checked below). A run whose ``algorithm.adv_estimator`` is not
``rhythm`` is never looked at. Each problem is reported with the full config key, its value and what to do.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from typing import Any

from verl_rhythm.config import RhythmConfig, RhythmConfigError, select_layers
from verl_rhythm.glue import seams

logger = logging.getLogger(__name__)

ESTIMATOR_NAME = "rhythm"
PLUGIN_NAME = "rhythm"
"""The entry-point name in the ``verl.plugins`` group (``setup.py``); ``VERL_USE_EXTERNAL_PLUGINS`` lists names."""

FSDP_STRATEGIES = ("fsdp", "fsdp2", "fsdp_turbo")
"""``actor.strategy`` values whose engine inherits ``FSDPEngineWithLMHead.forward_step`` (the capture's seam)."""
TURBO_CP_KEY = "actor_rollout_ref.actor.fsdp_config.turbo_config.distributed.ulysses_parallel_size"


class RhythmSetupError(ValueError):
    """A verl setting the rhythm estimator cannot run with. The message names every offending key."""


def is_rhythm_run(config: Any) -> bool:
    """Whether ``config.algorithm.adv_estimator`` selects the rhythm estimator."""
    algorithm = _get(config, "algorithm")
    return algorithm is not None and str(_get(algorithm, "adv_estimator", "")) == ESTIMATOR_NAME


def check_rhythm_run(config: Any, *, num_layers: int | None = None) -> RhythmConfig | None:
    """Validate a verl run config for the rhythm estimator.

    Args:
        config: the full verl config (``DictConfig`` or nested mappings), as ``main_ppo`` composes it.
        num_layers: the policy's number of decoder layers; default: read from the model's HF config
            (``actor_rollout_ref.model.hf_config_path`` or ``.path``), only when the strategy reads attention.

    Returns:
        the validated :class:`RhythmConfig`, or ``None`` when the run does not use the rhythm estimator.

    Raises:
        RhythmConfigError: a bad ``algorithm.rhythm.*`` key or value.
        RhythmSetupError: one or more unsupported settings, all listed in one message.
    """
    if not is_rhythm_run(config):
        warn_if_ignored(config)
        return None
    check_seams_at_start_up()  # a verl whose seams moved: one line naming its version and the function (RhythmDisabled)
    cfg = RhythmConfig.from_algorithm_config(_get(config, "algorithm"))
    problems = []

    n = _select(config, "actor_rollout_ref.rollout.n", 1)
    if int(n) < 2:
        problems.append(
            f"actor_rollout_ref.rollout.n={n}: the rhythm estimator scales GRPO's group-normalised advantage and "
            "needs at least 2 responses per prompt; set actor_rollout_ref.rollout.n>=2"
        )
    problems += _plugin_policy_problems(config)
    problems += flash_attention_problems(config)

    if cfg.needs_attention or cfg.needs_entropy:
        if bool(_select(config, "algorithm.rollout_correction.bypass_mode", False)):
            what = "attention statistics" if cfg.needs_attention else "token entropy"
            problems.append(
                "algorithm.rollout_correction.bypass_mode=true: bypass mode skips the actor's old-log-prob pass, "
                f"where the {what} of algorithm.rhythm.strategy={cfg.strategy!r} are computed; set "
                "algorithm.rollout_correction.bypass_mode=false"
            )
    if cfg.needs_attention:
        problems += _engine_problems(config)
        problems += _model_problems(config, cfg, num_layers)

    if problems:
        raise RhythmSetupError(
            "verl-rhythm cannot run this configuration (algorithm.adv_estimator=rhythm):\n  - "
            + "\n  - ".join(problems)
        )
    return cfg


def check_seams_at_start_up() -> None:
    """:func:`verl_rhythm.glue.seams.refuse`, after importing every verl module the glue watches (a rhythm run only:
    their installers run and record what moved) and checking the Ulysses seam, which is otherwise installed by the
    first capture.

    Without the plugin loaded in this process (``VERL_USE_EXTERNAL_PLUGINS``) nothing is installed on import, so only
    the Ulysses seam is checked; the start-up check names the plugin policy itself.
    """
    from verl_rhythm.glue import monkey_patch

    plugin = sys.modules.get("verl_rhythm.glue.plugin")
    for name in [*getattr(plugin, "PATCHES", {}), monkey_patch.MODULE]:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as err:  # not importable here at all: not a seam that moved; its own process will say
            logger.debug("verl-rhythm: start-up check cannot import %s: %s", name, err)
    if monkey_patch.MODULE in sys.modules:
        monkey_patch.check(sys.modules[monkey_patch.MODULE])
    seams.refuse()


def warn_if_ignored(config: Any) -> bool:
    """One warning line when ``algorithm.rhythm`` is set but ``algorithm.adv_estimator`` is not ``rhythm``.

    The keys then have no effect (the run is the named estimator's own); a recipe that declares the block and a
    baseline run that switches the estimator both land here, and so does a typo in the estimator's name.

    Returns:
        whether it warned.
    """
    algorithm = _get(config, "algorithm")
    block = _get(algorithm, "rhythm")
    if not block:
        return False
    estimator = _get(algorithm, "adv_estimator")
    logger.warning(
        "verl-rhythm: algorithm.rhythm is set but algorithm.adv_estimator=%s: the rhythm keys are ignored and this "
        "run trains with %s's advantages (set algorithm.adv_estimator=%s to use them)",
        estimator,
        estimator,
        ESTIMATOR_NAME,
    )
    return True


def _engine_problems(config: Any) -> list[str]:
    problems = []
    strategy = _select(config, "actor_rollout_ref.actor.strategy", "fsdp")
    if strategy == MEGATRON_STRATEGY:
        return megatron_problems(config)
    if strategy not in FSDP_STRATEGIES:
        problems.append(
            f"actor_rollout_ref.actor.strategy={strategy!r}: the attention capture lives in verl's FSDP engine "
            f"(FSDPEngineWithLMHead); supported: {', '.join(FSDP_STRATEGIES)}. Use algorithm.rhythm.strategy=none, "
            "random, uniform or entropy with other engines"
        )
    turbo_cp = _select(config, TURBO_CP_KEY, 1)
    if strategy == "fsdp_turbo" and turbo_cp is not None and int(turbo_cp) > 1:
        problems.append(
            f"{TURBO_CP_KEY}={turbo_cp}: FSDP-Turbo's context parallelism switches attention to eager on its own "
            "sequence shards (verl/workers/engine/fsdp/fsdp_turbo_impl.py), where the capture cannot see whole rows; "
            f"set it to 1 (verl's Ulysses, actor_rollout_ref.actor.ulysses_sequence_parallel_size, is supported)"
        )
    attn = _select(config, ATTN_IMPLEMENTATION_KEY, "flash_attention_2")
    packed = bool(_select(config, "actor_rollout_ref.model.use_remove_padding", True))
    for key in (
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
    ):
        sp = _select(config, key, 1)
        if sp is not None and int(sp) > 1 and not packed:
            problems.append(
                f"{key}={sp} with actor_rollout_ref.model.use_remove_padding=false: verl's Ulysses sequence "
                "parallelism shards packed rows only; set actor_rollout_ref.model.use_remove_padding=true"
            )
        if sp is not None and int(sp) > 1 and str(attn) != "flash_attention_2":
            problems.append(
                f"{key}={sp} with {ATTN_IMPLEMENTATION_KEY}={attn}: verl's Ulysses sequence parallelism runs through "
                "FlashAttention-2 (verl/models/transformers/monkey_patch.py), where the capture reads whole rows "
                f"below its all-to-all; set {ATTN_IMPLEMENTATION_KEY}=flash_attention_2 or {key}=1"
            )
    return problems


MEGATRON_STRATEGY = "megatron"
MEGATRON_KEY = "actor_rollout_ref.actor.megatron"
MEGATRON_PARALLEL_SIZES = {
    "tensor_model_parallel_size": "each rank would see only its share of the heads",
    "pipeline_model_parallel_size": "each stage would see only its layers",
    "context_parallel_size": "each rank would see only its share of each sequence's rows",
}
"""The Megatron parallel sizes the capture refuses above 1, with why."""


def megatron_problems(config: Any) -> list[str]:
    """What the capture on verl's Megatron engine (:mod:`verl_rhythm.glue.megatron_impl`) cannot run: anything but
    the CPU platform (megatron-core's local core attention; the TransformerEngine attention of GPU runs is
    unverified), TP, PP or CP above 1, virtual pipelining, and padded (non-THD) micro-batches."""
    from verl_rhythm.backends.cpu import requested

    problems = []
    if not requested():
        problems.append(
            f"actor_rollout_ref.actor.strategy={MEGATRON_STRATEGY!r}: the capture on verl's Megatron engine is "
            "verified only on the CPU platform (VERL_PLATFORM=cpu, megatron-core's local core attention); the "
            "TransformerEngine attention of GPU runs is unverified. Use actor_rollout_ref.actor.strategy=fsdp2 "
            f"({', '.join(FSDP_STRATEGIES)} are supported), or algorithm.rhythm.strategy=none, random, uniform or "
            "entropy with Megatron"
        )
    for key, why in MEGATRON_PARALLEL_SIZES.items():
        size = _select(config, f"{MEGATRON_KEY}.{key}", 1)
        if size is not None and int(size) > 1:
            problems.append(
                f"{MEGATRON_KEY}.{key}={size}: not supported by the rhythm capture on Megatron ({why}, and the "
                f"capture reads whole sequences of all heads); set {MEGATRON_KEY}.{key}=1"
            )
    vpp = _select(config, f"{MEGATRON_KEY}.virtual_pipeline_model_parallel_size", None)
    if vpp is not None and int(vpp) > 1:
        problems.append(
            f"{MEGATRON_KEY}.virtual_pipeline_model_parallel_size={vpp}: virtual pipeline stages are not supported "
            "by the rhythm capture on Megatron; set it to null"
        )
    if not bool(_select(config, "actor_rollout_ref.model.use_remove_padding", True)):
        problems.append(
            "actor_rollout_ref.model.use_remove_padding=false with actor_rollout_ref.actor.strategy=megatron: the "
            "capture reads verl's packed THD rows only; set actor_rollout_ref.model.use_remove_padding=true"
        )
    return problems


ATTN_IMPLEMENTATION_KEY = "actor_rollout_ref.model.override_config.attn_implementation"
FLASH_ATTN_INSTALL = (
    "pip install 'verl[fsdp]==0.9.1' (flash-attn 2.8.3 built for verl's torch), or pip install flash-attn==2.8.3 "
    "--no-build-isolation"
)


def flash_attention_problems(config: Any) -> list[str]:
    """FlashAttention-2 asked for (verl's default) where transformers would have nothing to serve it with.

    verl builds the actor with ``attn_implementation=flash_attention_2`` unless the config overrides it
    (``verl/workers/config/model.py:HFModelConfig``), and ``pip install 'verl[vllm]==0.9.1'`` installs no flash-attn:
    without this check the run would start Ray, the rollout servers and the workers before the actor's model fails to
    build. What transformers would load is :func:`flash_attention_2_source`. On ``trainer.device=cpu``
    (verl-rhythm's CPU backend) FlashAttention-2 is the backend's CPU implementation.
    """
    attn = _select(config, ATTN_IMPLEMENTATION_KEY, "flash_attention_2")
    if str(attn) != "flash_attention_2" or str(_select(config, "trainer.device", "cuda")) == "cpu":
        return []
    if flash_attention_2_source() is not None:
        return []
    return [
        f"{ATTN_IMPLEMENTATION_KEY}={attn} (verl's default) but transformers has no FlashAttention-2 to load here (no "
        f"flash_attn package, no 'kernels' package for its hub kernel, no Ascend NPU): install flash-attn next to verl "
        f"({FLASH_ATTN_INSTALL}), or set +{ATTN_IMPLEMENTATION_KEY}=sdpa"
    ]


def flash_attention_2_source() -> str | None:
    """What transformers would load for ``attn_implementation="flash_attention_2"`` here, or ``None``.

    Mirrors ``transformers/modeling_utils.py:PreTrainedModel._check_and_adjust_attn_implementation`` (transformers
    5.5-5.10): the ``flash_attn`` package (transformers' own package check, ``FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    ["pkg_availability_check"]``); else, with the ``kernels`` package and no NPU, the hub kernel
    ``FLASH_ATTN_KERNEL_FALLBACK["flash_attention_2"]`` (also XPU's native path); else Ascend NPU's built-in
    FlashAttention. Only package checks, no device check: the driver that runs this check may see no accelerator,
    and the workers that build the model do.

    Returns:
        ``"flash_attn"``, ``"kernels:<hub repo>"``, ``"npu"`` or ``None``.
    """
    from transformers import modeling_flash_attention_utils as fa_utils
    from transformers.utils import import_utils

    matrix = getattr(fa_utils, "FLASH_ATTENTION_COMPATIBILITY_MATRIX", {}).get(2, {})
    package_check = matrix.get("pkg_availability_check", lambda: importlib.util.find_spec("flash_attn") is not None)
    if package_check():
        return "flash_attn"
    npu = import_utils.is_torch_npu_available()
    if import_utils.is_kernels_available() and not npu:
        return "kernels:" + getattr(fa_utils, "FLASH_ATTN_KERNEL_FALLBACK", {}).get("flash_attention_2", "hub kernel")
    return "npu" if npu else None


def _model_problems(config: Any, cfg: RhythmConfig, num_layers: int | None) -> list[str]:
    layer_types = None
    problems = []
    if num_layers is None:
        hf_config = load_hf_config(config)
        model_type = str(getattr(hf_config, "model_type", ""))
        if getattr(hf_config, "vision_config", None) is not None and model_type not in VISION_LANGUAGE_MODEL_TYPES:
            path = _select(config, "actor_rollout_ref.model.path")
            return [
                f"actor_rollout_ref.model.path={path!r} is a vision-language model of model_type={model_type!r}: the "
                f"rhythm capture reads the text decoder of {', '.join(VISION_LANGUAGE_MODEL_TYPES)} only (their "
                "multimodal rows and verl's attention forwards are what it was checked against); not supported"
            ]
        num_layers = text_num_layers(hf_config)
        layer_types = text_layer_types(hf_config)
        problems += attention_variant_problems(hf_config)
    try:
        select_layers(num_layers, cfg.layers, layer_types)
    except RhythmConfigError as err:
        problems.append(str(err))
    return problems


VISION_LANGUAGE_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")
"""``model_type`` of the vision-language models whose text decoder the capture reads (its layers:
``text_config.num_hidden_layers`` / ``layer_types``); the vision tower's attention calls pass through untouched
(:func:`verl_rhythm.measure.hook.is_decoder_attention`). Any other model with a ``vision_config`` is refused."""


UNSUPPORTED_ATTENTION = {
    "attention_chunk_size": "chunked local attention (Llama 4): keys outside each query's chunk are masked",
    "use_bidirectional_attention": "bidirectional attention: the capture reads causal rows",
    "alibi": "ALiBi position biases: added to the logits outside the attention function",
}
"""Model-config keys (of the text config) naming attention variants the capture does not reproduce; a truthy value
refuses the run at start-up. Sliding windows (``sliding_window`` / ``layer_types``), soft-capping
(``attn_logit_softcapping``) and sinks (gpt-oss) are reproduced exactly, and layers whose ``layer_types`` entry is
not softmax attention (e.g. ``linear_attention``) are never selected (:func:`verl_rhythm.config.select_layers`)."""


def attention_variant_problems(hf_config: Any) -> list[str]:
    """Problems of a transformers config whose attention the capture would not read exactly, by config key."""
    text = getattr(hf_config, "text_config", None) or hf_config
    problems = []
    for key, why in UNSUPPORTED_ATTENTION.items():
        value = getattr(text, key, None)
        if value:
            problems.append(
                f"the policy model's config sets {key}={value!r} ({type(text).__name__}): {why}; the rhythm capture "
                "does not support it (use algorithm.rhythm.strategy=none, random, uniform or entropy)"
            )
    if getattr(text, "position_embedding_type", None) == "alibi":
        problems.append(
            f"the policy model's config sets position_embedding_type='alibi' ({type(text).__name__}): "
            f"{UNSUPPORTED_ATTENTION['alibi']}; the rhythm capture does not support it"
        )
    return problems


def load_hf_config(config: Any):
    """The policy's transformers config, from ``actor_rollout_ref.model.hf_config_path`` or ``.path``.

    The path is localised the way verl does it before reading it (``verl/workers/config/model.py:HFModelConfig``
    calls ``verl/utils/fs.py:copy_to_local(path, use_shm=model.use_shm)``; remote paths such as ``hdfs://...`` are
    copied once into verl's cache, where the trainer's own ``HFModelConfig`` finds them again).
    """
    from transformers import AutoConfig
    from verl.utils.fs import copy_to_local

    model = _select(config, "actor_rollout_ref.model")
    key = "hf_config_path" if _get(model, "hf_config_path") else "path"
    path = os.path.expanduser(str(_get(model, key)))
    try:
        local = copy_to_local(path, use_shm=bool(_get(model, "use_shm", False)))
        return AutoConfig.from_pretrained(local, trust_remote_code=bool(_get(model, "trust_remote_code", False)))
    except (OSError, ValueError) as err:  # what a missing, unreadable or unknown model config raises
        raise RhythmSetupError(
            f"actor_rollout_ref.model.{key}={path!r}: cannot read the model config to check algorithm.rhythm.layers "
            f"({type(err).__name__}: {err})"
        ) from err


def text_num_layers(hf_config: Any) -> int:
    """``num_hidden_layers`` of a transformers config, looking into ``text_config`` for multimodal configs."""
    for cfg in (hf_config, getattr(hf_config, "text_config", None)):
        n = getattr(cfg, "num_hidden_layers", None) if cfg is not None else None
        if n is not None:
            return int(n)
    raise RhythmSetupError(f"cannot find num_hidden_layers in the model config ({type(hf_config).__name__})")


def text_layer_types(hf_config: Any) -> list[str] | None:
    """``layer_types`` of a transformers config (or its ``text_config``), one entry per decoder layer, or ``None``."""
    for cfg in (hf_config, getattr(hf_config, "text_config", None)):
        types = getattr(cfg, "layer_types", None) if cfg is not None else None
        if types is not None:
            return [str(x) for x in types]
    return None


def _plugin_policy_problems(config: Any) -> list[str]:
    """``VERL_USE_EXTERNAL_PLUGINS`` (here or in the Ray runtime env) must not keep this plugin out of the workers."""
    problems = []
    sources = {
        "VERL_USE_EXTERNAL_PLUGINS": os.environ.get("VERL_USE_EXTERNAL_PLUGINS"),
        "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_PLUGINS": _select(
            config, "ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_PLUGINS"
        ),
    }
    for key, policy in sources.items():
        if policy is None:
            continue
        # as verl/__init__.py: exactly "auto" loads every plugin, anything else is a list of names ("none": none)
        normalised = str(policy).strip().lower()
        names = {x.strip() for x in normalised.split(",") if x.strip()}
        if normalised != "auto" and PLUGIN_NAME not in names:
            problems.append(
                f"{key}={policy!r} keeps the '{PLUGIN_NAME}' plugin from loading in verl's processes (verl/__init__.py "
                f"loads only the listed 'verl.plugins' entry points); add '{PLUGIN_NAME}' or unset it"
            )
    return problems


def _get(node: Any, key: str, default: Any = None) -> Any:
    """``node[key]`` of a mapping (``DictConfig`` included) or ``node.key`` of an object; ``default`` when absent.

    Only a missing key counts as absent (``DictConfig.get`` returns the default then, struct mode included); an
    interpolation that cannot resolve or a mandatory ``???`` value raises, naming the key, as it would in verl.
    """
    if node is None:
        return default
    if hasattr(node, "get"):
        return node.get(key, default)
    return getattr(node, key, default)


def _select(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        node = _get(node, part, None)
        if node is None:
            return default
    return node
