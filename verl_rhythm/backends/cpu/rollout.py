# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The ``hf`` rollout for verl 0.9.1: transformers' ``generate`` behind verl's async rollout interface.

Three pieces, one per verl seam:

- :class:`HFReplica` (``verl/workers/rollout/replica.py:RolloutReplica``, registered with
  ``RolloutReplicaRegistry.register("hf", ...)``): launches one :class:`HFRolloutServer` actor per replica. Only the
  hybrid mode is implemented (the rollout shares the training workers, as verl's synchronous trainer runs it).
- :class:`HFRolloutServer`: an async Ray actor. verl's agent loop calls ``generate`` on it concurrently
  (``verl/workers/rollout/llm_server.py:LLMServerClient.generate``); the server queues the requests and runs each
  group with equal sampling parameters as one batched ``generate``, returning verl's ``TokenOutput``.
- :class:`HFServerAdapter` (``verl/workers/rollout/base.py:BaseRollout``, entry ``("hf", "async")`` of verl's
  ``_ROLLOUT_REGISTRY``): lives in the training worker. verl's naive weight sync
  (``verl/workers/engine_workers.py:ActorRolloutRefWorker.update_weights``) hands it the actor's full tensors before
  every rollout; it ships them to its server through the Ray object store.

``sleep``/``wake_up`` and the KV-cache calls are no-ops: the server keeps its own copy of the weights on the CPU.

Vision-language models (an HF config with a ``vision_config``, e.g. Qwen2.5-VL) generate with images: the server
loads the model with ``AutoModelForImageTextToText`` and the folder's processor; a request's ``image_data`` (the PIL
images verl's agent loop extracted, ``verl/experimental/agent_loop/single_turn_agent_loop.py``) goes through the
processor's image processor, and ``pixel_values``/``image_grid_thw`` join ``generate`` next to the prompt ids, which
already hold one ``<|image_pad|>`` per merged patch (the agent loop tokenised the prompt with the same processor).
Videos and audio are refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Generator

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

from verl_rhythm.backends.cpu.sampling import SamplingParams, generate_batch

logger = logging.getLogger(__name__)

ROLLOUT_NAME = "hf"
"""``actor_rollout_ref.rollout.name`` of this backend."""

SERVER_NAME_PREFIX = f"{ROLLOUT_NAME}_server_"


def server_actor_name(replica_rank: int) -> str:
    """The Ray actor name of a replica's server: the adapter finds its server by this name."""
    return f"{SERVER_NAME_PREFIX}{replica_rank}"


def _torch_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class HFRolloutServer:
    """One replica's generation server (a Ray actor; every public method is called remotely).

    Args:
        model_path: the HF model folder (``actor_rollout_ref.model.local_path``).
        prompt_length, response_length: ``rollout.prompt_length`` / ``rollout.response_length``; a request's default
            ``max_tokens`` follows verl's vLLM server: ``min(response_length, prompt_length + response_length - P)``.
        max_model_len: ``rollout.max_model_len`` or ``None``; capped by the model's ``max_position_embeddings``.
        max_batch_size: most requests in one ``generate`` call (``rollout.max_num_seqs``).
        trust_remote_code: passed to transformers.
        seed: base seed; the i-th batch after the weight update tagged with step s samples, on replica r, from
            ``seed + r * 1_000_003 + s * 10_007 + i``: a function of the training step, not of the process's history.
        replica_rank: this replica's rank.
    """

    def __init__(
        self,
        model_path: str,
        *,
        prompt_length: int,
        response_length: int,
        max_model_len: int | None,
        max_batch_size: int,
        trust_remote_code: bool = False,
        seed: int = 0,
        replica_rank: int = 0,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig

        torch.set_num_threads(_torch_threads())
        self.replica_rank = replica_rank
        self.prompt_length = prompt_length
        self.response_length = response_length
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        context = getattr(config, "max_position_embeddings", None)
        self.max_model_len = min(x for x in (max_model_len, context) if x) if (max_model_len or context) else None
        self.processor = None
        model_cls = AutoModelForCausalLM
        if getattr(config, "vision_config", None) is not None:
            from transformers import AutoProcessor

            model_cls = AutoModelForImageTextToText
            self.processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.model = model_cls.from_pretrained(
            model_path, torch_dtype=torch.float32, trust_remote_code=trust_remote_code
        ).eval()
        try:
            generation = GenerationConfig.from_pretrained(model_path)
        except OSError:
            generation = self.model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else config.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if not self.eos_token_ids:
            raise ValueError(f"hf rollout: the model at {model_path} declares no eos_token_id")
        pad = generation.pad_token_id if generation.pad_token_id is not None else config.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]
        self.max_batch_size = max(1, int(max_batch_size))
        self.seed = int(seed)
        self.global_steps = None
        self._calls = 0
        self._pending: list[tuple[list[int], SamplingParams, asyncio.Future, dict | None]] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._model_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ generation
    def _max_tokens(self, prompt_len: int, params: dict) -> int:
        """verl's vLLM server rule for the response budget, then the model's context as a hard limit."""
        requested = params.get("max_tokens", params.get("max_new_tokens"))
        if requested is None:
            requested = min(self.response_length, self.prompt_length + self.response_length - prompt_len)
        requested = int(requested)
        if self.max_model_len is not None and prompt_len + max(requested, 1) > self.max_model_len:
            raise ValueError(
                f"hf rollout: prompt ({prompt_len} tokens) + response ({requested} tokens) exceeds the model's "
                f"context of {self.max_model_len} tokens; lower data.max_prompt_length or data.max_response_length "
                "(or rollout.max_model_len)"
            )
        return max(1, requested)

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling_params: dict,
        image_data=None,
        video_data=None,
        **kwargs,
    ):
        """Sample one response for ``prompt_ids``; batched with the requests that arrive meanwhile.

        Returns:
            verl's ``TokenOutput`` (``token_ids``, ``log_probs``, ``stop_reason="completed"``,
            ``extra_fields={"global_steps": ...}``).
        """
        if video_data is not None or kwargs.get("audio_data") is not None:
            raise ValueError("hf rollout: video and audio inputs are not supported (images are)")
        prompt = [int(t) for t in prompt_ids]
        vision = self._vision_inputs(image_data, prompt) if image_data else None
        params = SamplingParams.from_request(dict(sampling_params), self._max_tokens(len(prompt), sampling_params))
        future = asyncio.get_running_loop().create_future()
        self._pending.append((prompt, params, future, vision))
        self._ensure_worker()
        self._wakeup.set()
        completion = await future
        want_log_probs = sampling_params.get("logprobs", False) not in (False, None)
        return TokenOutput(
            token_ids=completion.token_ids,
            log_probs=completion.log_probs if want_log_probs else None,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def _vision_inputs(self, images: list, prompt: list[int]) -> dict[str, torch.Tensor]:
        """``pixel_values`` ``(N_patches, C·T·P²)`` and ``image_grid_thw`` ``(N_images, 3)`` of a request's images.

        Raises:
            ValueError: the model has no vision tower, or the prompt's image tokens do not match the images' patches.
        """
        if self.processor is None:
            raise ValueError(
                "hf rollout: the request carries images but actor_rollout_ref.model.path is a text-only model"
            )
        inputs = self.processor.image_processor(images=list(images), return_tensors="pt")
        grid = inputs["image_grid_thw"]
        merge = self.processor.image_processor.merge_size
        expected = int((grid.prod(-1) // (merge * merge)).sum())
        image_token = self.model.config.image_token_id
        found = sum(1 for t in prompt if t == image_token)
        if found != expected:
            raise ValueError(
                f"hf rollout: the prompt holds {found} image tokens, its {len(images)} image(s) need {expected}; "
                "the agent loop and the rollout must use the same processor (actor_rollout_ref.model.path)"
            )
        return {"pixel_values": inputs["pixel_values"], "image_grid_thw": grid}

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._model_lock = self._model_lock or asyncio.Lock()
            self._worker = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # let the requests of one agent-loop burst arrive before the first batch starts
            await asyncio.sleep(0.05)
            while self._pending:
                params = self._pending[0][1]
                batch = [r for r in self._pending if r[1] == params][: self.max_batch_size]
                for r in batch:
                    self._pending.remove(r)
                vision = [r[3] for r in batch if r[3] is not None]
                model_inputs = (
                    {k: torch.cat([v[k] for v in vision]) for k in vision[0]} if vision else None
                )  # in batch order: the order of the image tokens across the batch
                seed = self.seed + self.replica_rank * 1_000_003 + (self.global_steps or 0) * 10_007 + self._calls
                self._calls += 1
                try:
                    async with self._model_lock:
                        completions = await asyncio.to_thread(
                            generate_batch,
                            self.model,
                            [r[0] for r in batch],
                            params,
                            eos_token_ids=self.eos_token_ids,
                            pad_token_id=self.pad_token_id,
                            generator_seed=seed,
                            model_inputs=model_inputs,
                        )
                except Exception as err:  # hand the error to every waiting request instead of hanging them
                    for _, _, future, _ in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, _, future, _), completion in zip(batch, completions, strict=True):
                    if not future.done():
                        future.set_result(completion)

    # ------------------------------------------------------------------ weights
    async def update_weights(self, named_tensors: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Copy the trainer's weights in; every tensor must name a parameter or buffer of the model.

        Raises:
            KeyError: a name the model does not have, or a parameter left without a new value (tied weights
                excepted).
            ValueError: a shape mismatch.
        """
        self._model_lock = self._model_lock or asyncio.Lock()
        async with self._model_lock:
            own = dict(self.model.named_parameters(remove_duplicate=False))
            own.update(dict(self.model.named_buffers()))
            unknown = sorted(set(named_tensors) - set(own))
            if unknown:
                raise KeyError(f"hf rollout: weights for unknown parameters {unknown[:5]} (of {len(unknown)})")
            with torch.no_grad():
                for name, value in named_tensors.items():
                    if own[name].shape != value.shape:
                        raise ValueError(
                            f"hf rollout: weight {name} has shape {tuple(value.shape)}, "
                            f"the model expects {tuple(own[name].shape)}"
                        )
                    own[name].copy_(value.to(own[name].dtype))
            updated = {id(own[n]) for n in named_tensors}
            missed = [n for n, p in self.model.named_parameters() if id(p) not in updated]
            if missed:
                raise KeyError(f"hf rollout: the weight update left parameters unchanged: {missed[:5]}")
            if global_steps is not None:
                self._set_step(global_steps)
        return len(named_tensors)

    async def set_global_steps(self, global_steps: int) -> None:
        self._set_step(global_steps)

    def _set_step(self, global_steps: int) -> None:
        if global_steps != self.global_steps:
            self.global_steps = global_steps
            self._calls = 0

    # ------------------------------------------------------------------ verl's control calls (no-ops on CPU)
    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> None:
        return None

    async def resume_generation(self) -> None:
        return None

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFReplica(RolloutReplica):
    """A rollout replica served by :class:`HFRolloutServer` (hybrid mode only: shares the training workers)."""

    async def init_colocated(self, resource_pool):
        raise NotImplementedError(_HYBRID_ONLY)

    async def init_standalone(self):
        raise NotImplementedError(_HYBRID_ONLY)

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self):
        if self.world_size != 1:
            raise ValueError(
                "hf rollout: actor_rollout_ref.rollout.tensor_model_parallel_size, data_parallel_size and "
                f"pipeline_model_parallel_size must be 1 (replica world size {self.world_size})"
            )
        cfg = self.config
        model = self.model_config  # the DictConfig of actor_rollout_ref.model (the trainer passes it unconverted)
        model_path = os.path.expanduser(model.get("local_path") or model.path)
        server = (
            ray.remote(HFRolloutServer)
            .options(name=server_actor_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(
                model_path,
                prompt_length=cfg.prompt_length,
                response_length=cfg.response_length,
                max_model_len=cfg.max_model_len,
                max_batch_size=cfg.max_num_seqs,
                trust_remote_code=bool(model.get("trust_remote_code", False)),
                seed=cfg.seed if cfg.seed is not None else 0,
                replica_rank=self.replica_rank,
            )
        )
        await server.wake_up.remote()  # a failed model load surfaces here, at start-up
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"{ROLLOUT_NAME}://replica-{self.replica_rank}"


_HYBRID_ONLY = (
    "hf rollout: replicas on resources of their own (verl's colocated and standalone rollout modes) are not "
    "supported, only the hybrid mode, in which the rollout shares the training workers: set "
    "actor_rollout_ref.hybrid_engine=true and trainer.v1.trainer_mode=sync or colocate_async"
)


class HFServerAdapter(BaseRollout):
    """The training worker's handle on its replica's :class:`HFRolloutServer`: weights in, nothing else."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        world = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self._has_server = rank % world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    @torch.no_grad()
    async def update_weights(
        self,
        weights: Generator[tuple[str, torch.Tensor], None, None],
        global_steps: int | None = None,
        wire_format: str = "named_tensors",
        peft_config=None,
        **kwargs,
    ):
        """Ship the actor's full tensors to the server through the Ray object store."""
        if wire_format != "named_tensors":
            raise ValueError(f"hf rollout: wire_format={wire_format!r} is not supported (only named_tensors)")
        if peft_config is not None:
            raise ValueError("hf rollout: LoRA adapters are not supported; set actor_rollout_ref.model.lora.merge=true")
        # every rank walks the generator: FSDP gathers each full tensor collectively
        state = {name: t.detach().to("cpu", copy=True) for name, t in weights}
        if self._has_server:
            await self._server_handle().update_weights.remote(ray.put(state), global_steps)
