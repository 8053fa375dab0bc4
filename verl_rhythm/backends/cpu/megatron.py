# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The shims that let verl 0.9.1's Megatron engine (``MegatronEngineWithLMHead``, vanilla mbridge, TP = PP = CP = 1)
run on the CPU platform, with megatron-core 0.16.1 and mbridge 0.15.1.

:mod:`.plugin` arranges each installer below for the moment its module is imported, and only in a process that
selects the CPU platform (``VERL_PLATFORM=cpu``); a GPU user's process never runs any of them. Every shim checks its
target first (the function or attribute exists with the parameters relied on; otherwise it logs and leaves it), is
applied once (:func:`verl_rhythm.wrapping.mark`), and changes behaviour only where the stock code would fail on a
machine without CUDA (``torch.cuda.is_available()`` false) or names TransformerEngine, which has no CPU build.

====  ==============================================================  =============================================
#     replaces (file: function)                                       on the CPU platform
====  ==============================================================  =============================================
1     ``torch.cuda.current_device`` (called by megatron-core's         ``"cpu"``: a device for megatron-core's
      ``models/common/embeddings/rotary_pos_embedding.py:              ``device=torch.cuda.current_device()``
      RotaryEmbedding``, ``transformer/attention.py``, ...)
2     ``torch.nn.Module.cuda`` (``mbridge/core/util.py:get_model``      the module itself (stays on the CPU)
      moves every model chunk with it)
8     ``torch.cuda.synchronize`` (called by megatron-core's pipeline    nothing (gloo's point-to-point operations
      ``pipeline_parallel/p2p_communication.py:P2PCommunicator.         have completed once waited on)
      _communicate_shapes`` / ``_communicate``, PP > 1)
3     ``megatron/core/pipeline_parallel/schedules.py``: the             the tensor on the CPU
      ``torch.zeros(..., device="cuda")`` of
      ``forward_backward_no_pipelining`` and the pipelined schedules
4     ``megatron/core/tensor_parallel/random.py:                        megatron-core's inference RNG tracker (no CUDA
      model_parallel_cuda_manual_seed`` (called by                      RNG state) and ``torch.manual_seed(seed)``
      ``verl/workers/engine/megatron/utils.py:set_random_seed``)
5     ``mbridge/core/llm_bridge.py:LLMBridge.                           megatron-core's local (non-TE) decoder spec,
      _get_transformer_layer_spec`` (TransformerEngine spec only)       its core attention :class:`CPUCoreAttention`
6     ``mbridge/core/bridge.py:Bridge._weight_name_mapping_mcore_to_hf``  the local spec's norm names mapped as the TE
                                                                      spec's fused names (``layer_norm_weight``)
7     ``mbridge/core/auto_bridge.py:AutoBridge.from_config``             ``rope_theta`` from transformers 5's
                                                                      ``rope_parameters``; ``use_cpu_initialization``;
                                                                      ``sequence_parallel=False`` (mbridge turns it on
                                                                      with TP; the local spec's norms refuse it)
9     ``verl/workers/engine/megatron/transformer_impl.py:               :class:`CPUMegatronOptimizer` (AdamW on fp32
      MegatronEngine._build_optimizer`` (megatron-core's optimizers      master weights, megatron-core's weight-decay
      allocate ``device='cuda'`` tensors and assert                      groups and clipping); verl's training hooks
      ``param.type() == 'torch.cuda.*Tensor'``)                          and LR scheduler as in the stock builder
====  ==============================================================  =============================================

Not shimmed: verl's ``McoreEngineConfig`` accepts only ``dtype`` bfloat16 / float16 (``verl/workers/config/engine.py:
McoreEngineConfig.__post_init__``); a CPU test that wants fp32 sets the field after construction itself.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types

import torch

from verl_rhythm.backends.cpu.platform import is_selected
from verl_rhythm.wrapping import is_wrapped, mark

logger = logging.getLogger(__name__)


def _no_cuda() -> bool:
    """The shims' condition: the CPU platform is selected and this process has no CUDA."""
    return is_selected() and not torch.cuda.is_available()


def _target(owner, name: str, params: tuple[str, ...] = ()):
    """``owner.name`` when it is a callable taking ``params`` (a shim's precondition), else ``None`` (logged)."""
    fn = inspect.getattr_static(owner, name, None)
    fn = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
    if not callable(fn):
        logger.warning("verl-rhythm CPU backend: %s.%s is gone; its Megatron shim is not applied", owner, name)
        return None
    try:
        have = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        have = {}
    if have and any(p not in have for p in params):
        logger.warning(
            "verl-rhythm CPU backend: %s.%s no longer takes %s; its Megatron shim is not applied", owner, name, params
        )
        return None
    return fn


def _replace(owner, name: str, stock, wrapper, *, kind=None) -> None:
    functools.update_wrapper(wrapper, stock)
    mark(wrapper, stock)
    setattr(owner, name, kind(wrapper) if kind is not None else wrapper)


def install_torch_shims(_module=None) -> None:
    """Shims 1, 2 and 8 (``torch.cuda.current_device``, ``torch.nn.Module.cuda``, ``torch.cuda.synchronize``); run
    when ``megatron.core`` is imported."""
    stock_device = _target(torch.cuda, "current_device")
    if stock_device is not None and not is_wrapped(stock_device):

        def current_device():
            return "cpu" if _no_cuda() else stock_device()

        _replace(torch.cuda, "current_device", stock_device, current_device)
    stock_cuda = _target(torch.nn.Module, "cuda", ("device",))
    if stock_cuda is not None and not is_wrapped(stock_cuda):

        def cuda(self, device=None):
            return self if _no_cuda() else stock_cuda(self, device)

        _replace(torch.nn.Module, "cuda", stock_cuda, cuda)
    stock_sync = _target(torch.cuda, "synchronize", ("device",))
    if stock_sync is not None and not is_wrapped(stock_sync):

        def synchronize(device=None):
            return None if _no_cuda() else stock_sync(device)

        _replace(torch.cuda, "synchronize", stock_sync, synchronize)


class _CPUTorch(types.ModuleType):
    """``torch`` as ``megatron/core/pipeline_parallel/schedules.py`` sees it (shim 3): ``zeros(..., device="cuda")``
    on the CPU without CUDA; every other attribute is torch's."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if kwargs.get("device") == "cuda" and _no_cuda():
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)


def install_schedules_shim(schedules) -> None:
    """Shim 3: the schedules module's ``torch`` global (only that module's) becomes :class:`_CPUTorch`."""
    if isinstance(schedules.__dict__.get("torch"), _CPUTorch):
        return
    if schedules.__dict__.get("torch") is not torch or _target(schedules, "forward_backward_no_pipelining") is None:
        logger.warning("verl-rhythm CPU backend: %s does not use torch as expected; shim 3 not applied", schedules)
        return
    schedules.torch = _CPUTorch("torch")


def install_seed_shim(tensor_parallel) -> None:
    """Shim 4: ``tensor_parallel.model_parallel_cuda_manual_seed`` without CUDA seeds the CPU generator and sets up
    megatron-core's inference RNG tracker (which keeps no CUDA RNG state)."""
    stock = _target(tensor_parallel, "model_parallel_cuda_manual_seed", ("seed",))
    tracker = _target(tensor_parallel.random, "initialize_rng_tracker", ("inference_rng_tracker", "force_reset"))
    if stock is None or tracker is None or is_wrapped(stock):
        return

    def model_parallel_cuda_manual_seed(seed, *args, **kwargs):
        if not _no_cuda():
            return stock(seed, *args, **kwargs)
        torch.manual_seed(seed)
        tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)

    _replace(tensor_parallel, "model_parallel_cuda_manual_seed", stock, model_parallel_cuda_manual_seed)
    tensor_parallel.random.model_parallel_cuda_manual_seed = tensor_parallel.model_parallel_cuda_manual_seed


def cpu_core_attention_class():
    """:class:`CPUCoreAttention`, built on first use (megatron-core imported by then)."""
    global CPUCoreAttention
    if CPUCoreAttention is not None:
        return CPUCoreAttention
    import torch.nn.functional as F
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    class _CPUCoreAttention(DotProductAttention):
        """megatron-core's local ``DotProductAttention`` plus packed THD rows (which the stock class refuses).

        A packed call gets ``query (T, H, D)``, ``key``/``value (T, H_kv, D)`` and ``PackedSeqParams`` (verl's
        ``preprocess_thd_engine``): sequence i occupies rows ``cu_seqlens_q_padded[i]`` onwards for
        ``cu_seqlens_q[i+1] - cu_seqlens_q[i]`` rows and attends causally within them (SDPA, fp32 softmax on CPU).
        Returns ``(T, H * D)`` like the stock class; rows outside every sequence (padding) are zero.
        """

        def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None):  # fmt: skip
            if packed_seq_params is None:
                return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias)
            p = packed_seq_params
            if p.qkv_format != "thd":
                raise ValueError(f"CPUCoreAttention: packed_seq_params.qkv_format={p.qkv_format!r}, expected 'thd'")
            lengths = p.cu_seqlens_q.diff().tolist()
            starts = (p.cu_seqlens_q_padded if p.cu_seqlens_q_padded is not None else p.cu_seqlens_q).tolist()
            groups = query.shape[1] // key.shape[1]
            out = query.new_zeros(query.shape)
            for start, n in zip(starts, lengths, strict=False):
                q, k, v = (x[start : start + n].transpose(0, 1) for x in (query, key, value))
                k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
                out[start : start + n] = o.transpose(0, 1)
            return out.reshape(out.shape[0], -1)

    _CPUCoreAttention.__name__ = _CPUCoreAttention.__qualname__ = "CPUCoreAttention"
    CPUCoreAttention = _CPUCoreAttention
    return CPUCoreAttention


CPUCoreAttention = None
"""The CPU core attention class (:func:`cpu_core_attention_class`); ``None`` until megatron-core is imported."""


def install_layer_spec_shim(llm_bridge) -> None:
    """Shim 5: ``LLMBridge._get_transformer_layer_spec`` without CUDA returns megatron-core's local decoder spec
    (``get_gpt_decoder_block_spec(..., use_transformer_engine=False)``) with :class:`CPUCoreAttention`."""
    cls = llm_bridge.LLMBridge
    stock = _target(cls, "_get_transformer_layer_spec", ("vp_stage",))
    spec_fn = _target(llm_bridge, "get_gpt_decoder_block_spec", ("use_transformer_engine",))
    if stock is None or spec_fn is None or is_wrapped(stock):
        return

    def _get_transformer_layer_spec(self, vp_stage=None):
        if not _no_cuda():
            return stock(self, vp_stage)
        extra = {"vp_stage": vp_stage} if "vp_stage" in inspect.signature(spec_fn).parameters else {}
        spec = llm_bridge.get_gpt_decoder_block_spec(self.config, use_transformer_engine=False, **extra)
        attention = cpu_core_attention_class()
        for layer_spec in spec.layer_specs:
            layer_spec.submodules.self_attention.submodules.core_attention = attention
        return spec

    _replace(cls, "_get_transformer_layer_spec", stock, _get_transformer_layer_spec)


LOCAL_TO_TE_NORMS = (
    (".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"),
    (".pre_mlp_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"),
)
"""The local spec's separate norms → the names of the TE spec's fused norms, which mbridge's tables map to HF."""


def install_norm_names_shim(bridge) -> None:
    """Shim 6: ``Bridge._weight_name_mapping_mcore_to_hf`` maps the local spec's norm names as the TE names."""
    cls = bridge.Bridge
    stock = _target(cls, "_weight_name_mapping_mcore_to_hf", ("mcore_weights_name",))
    if stock is None or is_wrapped(stock):
        return

    def _weight_name_mapping_mcore_to_hf(self, mcore_weights_name):
        if _no_cuda():
            for local, te in LOCAL_TO_TE_NORMS:
                mcore_weights_name = mcore_weights_name.replace(local, te)
        return stock(self, mcore_weights_name)

    _replace(cls, "_weight_name_mapping_mcore_to_hf", stock, _weight_name_mapping_mcore_to_hf)


def install_from_config_shim(auto_bridge) -> None:
    """Shim 7: ``AutoBridge.from_config`` reads ``rope_theta`` from transformers 5's ``rope_parameters`` (mbridge
    0.15.1 reads ``hf_config.rope_theta``, gone in transformers 5) and, without CUDA, builds on the CPU
    (``use_cpu_initialization``) without megatron-core's sequence parallelism: mbridge sets ``sequence_parallel`` when
    TP > 1 (``mbridge/core/llm_bridge.py:LLMBridge._build_base_config``), which the local spec's norms refuse
    (``megatron/core/transformer/torch_norm.py:WrappedTorchNorm``). verl's ``override_transformer_config`` is applied
    after this (``set_extra_args``) and still wins."""
    cls = auto_bridge.AutoBridge
    stock = _target(cls, "from_config", ("hf_config",))
    if stock is None or is_wrapped(stock):
        return

    def from_config(klass, hf_config, **kwargs):
        if not _no_cuda():
            return stock(klass, hf_config, **kwargs)
        rope = getattr(hf_config, "rope_parameters", None) or {}
        if getattr(hf_config, "rope_theta", None) is None and "rope_theta" in rope:
            hf_config.rope_theta = rope["rope_theta"]
        bridge = stock(klass, hf_config, **kwargs)
        bridge.set_extra_args(use_cpu_initialization=True, sequence_parallel=False)
        return bridge

    _replace(cls, "from_config", stock, from_config, kind=classmethod)


class CPUMegatronOptimizer:
    """The optimizer of verl's Megatron engine on the CPU platform (shim 9), in place of megatron-core's
    ``Float16OptimizerWithFloat16Params`` / ``DistributedOptimizer``, which cannot be built without CUDA.

    What verl's engine asks of an optimizer (``MegatronEngine.optimizer_zero_grad``, ``optimizer_step``,
    ``lr_scheduler_step``; ``verl/utils/megatron_utils.py:register_megatron_training_hooks``; megatron-core's
    ``OptimizerParamScheduler``), done as megatron-core's mixed-precision Adam does it: fp32 master copies of the
    model's (bf16/fp32) parameters; gradients read from the DDP buffers (``param.main_grad``: whole, as there is one
    model replica; more is refused); the global gradient norm clipped at ``config.clip_grad``;
    ``torch.optim.AdamW`` (decoupled weight decay, megatron-core's ``adam``) with megatron-core's two groups, no weight
    decay on biases and 1-D parameters (``wd_mult`` 0, read by the scheduler); the master weights copied back.
    No loss scaling (bf16 or fp32; fp16's dynamic scaler is not provided: refused).

    Args:
        model_chunks: verl's ``engine.module`` (DDP-wrapped megatron-core models).
        config: megatron-core ``OptimizerConfig`` (``verl/utils/megatron/optimizer.py:init_megatron_optim_config``).

    Raises:
        ValueError: ``config.optimizer`` other than ``adam``, or ``fp16`` (no loss scaler on CPU).
    """

    def __init__(self, model_chunks, config):
        if str(config.optimizer).lower() != "adam":
            raise ValueError(
                f"actor_rollout_ref.actor.optim.optimizer={config.optimizer}: the Megatron engine on the CPU platform "
                "runs adam only"
            )
        if getattr(config, "fp16", False):
            raise ValueError(
                "actor_rollout_ref.actor.megatron.dtype=float16: the Megatron engine on the CPU platform has no loss "
                "scaler; use bfloat16"
            )
        if _data_parallel_size() > 1:
            raise ValueError(
                "the Megatron engine on the CPU platform runs one model replica (no data parallelism): its optimizer "
                "steps on whole gradient buffers, which megatron-core's distributed optimizer layout reduce-scatters; "
                "set trainer.n_gpus_per_node to the model-parallel size"
            )
        self.config = config
        self.model_params, groups = [], {True: [], False: []}
        for chunk in model_chunks:
            for name, param in chunk.named_parameters():
                if not param.requires_grad:
                    continue
                master = param.detach().clone().float()
                self.model_params.append((param, master))
                groups[not (param.dim() == 1 or name.endswith(".bias"))].append(master)
        param_groups = [
            {"params": params, "wd_mult": 1.0 if decay else 0.0, "lr_mult": 1.0}
            for decay, params in groups.items()
            if params
        ]
        self.optimizer = torch.optim.AdamW(
            param_groups,
            lr=config.lr,
            betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        for group in self.optimizer.param_groups:
            group["weight_decay"] = config.weight_decay * group["wd_mult"]

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def get_loss_scale(self) -> torch.Tensor:
        return torch.ones(1)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """megatron-core's ``grad_scale_func``: the loss unscaled (no loss scaling in bf16/fp32)."""
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param, master in self.model_params:
            master.grad = None
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    @torch.no_grad()
    def step(self) -> tuple[bool, float, None]:
        """One AdamW step on the master weights; returns ``(update_successful, grad_norm, num_zeros_in_grad)`` as
        megatron-core's ``MegatronOptimizer.step`` (the norm before clipping)."""
        for param, master in self.model_params:
            grad = getattr(param, "main_grad", None)
            grad = param.grad if grad is None else grad
            master.grad = None if grad is None else grad.detach().float().clone()
        masters = [master for _, master in self.model_params if master.grad is not None]
        norms = torch.stack([m.grad.norm() for m in masters]) if masters else torch.zeros(1)
        grad_norm = float(norms.norm())
        if not torch.isfinite(torch.tensor(grad_norm)):
            return False, grad_norm, None
        if self.config.clip_grad > 0:
            torch.nn.utils.clip_grads_with_norm_(masters, self.config.clip_grad, torch.tensor(grad_norm))
        self.optimizer.step()
        for param, master in self.model_params:
            param.copy_(master)
        return True, grad_norm, None

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def sharded_state_dict(self, *args, **kwargs):
        raise NotImplementedError(
            "checkpoints of the Megatron engine's optimizer are not supported on the CPU platform: set "
            "trainer.save_freq=-1"
        )


def _data_parallel_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_world_size()


def install_optimizer_shim(transformer_impl) -> None:
    """Shim 8: ``MegatronEngine._build_optimizer`` without CUDA builds :class:`CPUMegatronOptimizer` from the
    megatron-core config verl's stock builder would use, and registers verl's training hooks with it."""
    cls = getattr(transformer_impl, "MegatronEngine", None)
    stock = _target(cls, "_build_optimizer") if cls is not None else None
    if stock is None or is_wrapped(stock):
        return

    def _build_optimizer(self):
        if not _no_cuda():
            return stock(self)
        from verl.utils.megatron.optimizer import init_megatron_optim_config
        from verl.utils.megatron_utils import register_megatron_training_hooks

        config = init_megatron_optim_config(
            self.optimizer_config,
            use_distributed_optimizer=False,
            fp16=self.param_dtype == torch.float16,
            bf16=self.param_dtype == torch.bfloat16,
        )
        optimizer = CPUMegatronOptimizer(self.module, config)
        register_megatron_training_hooks(self.module, optimizer)
        return optimizer

    _replace(cls, "_build_optimizer", stock, _build_optimizer)


INSTALLERS = {
    "megatron.core": install_torch_shims,
    "megatron.core.pipeline_parallel.schedules": install_schedules_shim,
    "megatron.core.tensor_parallel": install_seed_shim,
    "mbridge.core.llm_bridge": install_layer_spec_shim,
    "mbridge.core.bridge": install_norm_names_shim,
    "mbridge.core.auto_bridge": install_from_config_shim,
    "verl.workers.engine.megatron.transformer_impl": install_optimizer_shim,
}
"""Module → its installer; :mod:`.plugin` runs each when the module is imported, on the CPU platform only."""
