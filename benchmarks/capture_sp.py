# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""Cost of the rhythm capture under Ulysses sequence parallelism: ops, host syncs and communication, per rank.

verl's FSDP engine (FlashAttention-2; on CPU the CPU flash-attn, gloo) runs the actor's log-prob pass on one packed
micro-batch, stock and with the capture, at sequence-parallel sizes ``--sp`` (each size in fresh processes). A
``TorchDispatchMode`` counts, on each rank, the aten ops, the ops that make the host wait (``.item()``, ``nonzero``,
cross-device copies) and the collectives with the bytes the rank contributes. The capture's share is the
difference between the two passes: ops added per selected layer, syncs added, and the collectives it adds (none
during the forward: each rank records below verl's own all-to-all; at ``finalize`` one all-gather of the head spans
and one all-reduce of the group sums of WAAD and FAI). Counts are exact and independent of load; seconds are not
printed (a 2-core host says nothing about a GPU cluster).

Usage::

    python benchmarks/capture_sp.py                           # tiny Qwen2 (4 heads), sp 1 and 2, 3 x 200 tokens
    python benchmarks/capture_sp.py --model smollm2 --sp 1 3  # SmolLM2-135M's shapes (9 heads / 3 kv), random
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from transformers import AutoConfig  # noqa: E402

from verl_rhythm.config import RhythmConfig, select_layers  # noqa: E402
from verl_rhythm.testing.ops import OpCounter  # noqa: E402
from verl_rhythm.testing.process_group import spawn_cpu_group  # noqa: E402

CFG = RhythmConfig(chunk_size=64)


def save_model(name: str, out: Path) -> int:
    """A random model of shape ``name`` saved to ``out`` (no download); returns its vocabulary size."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    if name == "tiny":
        from models import tiny_model

        model = tiny_model("qwen2", attn_implementation="eager")
    elif name == "smollm2":
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)  # fmt: skip
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
    else:
        raise SystemExit(f"--model {name!r}: choose tiny or smollm2")
    model.save_pretrained(out)
    return model.config.vocab_size


def sequences(lengths: list[int], vocab: int):
    g = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        prompt = n // 4
        out.append((torch.randint(0, vocab, (prompt,), generator=g), torch.randint(0, vocab, (n - prompt,),
                    generator=g), torch.ones(n - prompt, dtype=torch.long)))  # fmt: skip
    return out


def rank_counts(rank: int, model_path: str, sp: int, lengths: list[int], vocab: int) -> dict:
    """On one rank: the stock and the capturing log-prob pass of one micro-batch, counted."""
    from verl_rhythm.backends.cpu.flash_attn import install
    from verl_rhythm.testing.engine import build_engine, log_prob_batch, run_log_prob_pass

    install.install()
    engine = build_engine(model_path, attn_implementation="flash_attention_2", ulysses_sequence_parallel_size=sp)
    seqs = sequences(lengths, vocab)
    out = {}
    for name, capture in (("warm-up", CFG), ("stock", None), ("capture", CFG)):
        batch = log_prob_batch(seqs, capture=capture, micro_batch_size=len(seqs))
        with OpCounter() as counter:
            run_log_prob_pass(engine, batch)
        out[name] = {"ops": counter.ops, "syncs": list(counter.syncs), "collectives": list(counter.collectives)}
    return out


def extra(a: list, b: list) -> list:
    """The items of ``b`` beyond those of ``a`` (multiset difference, order of ``b``)."""
    left = list(a)
    out = []
    for x in b:
        if x in left:
            left.remove(x)
        else:
            out.append(x)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``tests/test_docs_commands_on_cpu.py`` parses the documented commands)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 (random weights, no download)")
    ap.add_argument("--sp", type=int, nargs="+", default=[1, 2], help="sequence-parallel sizes")
    ap.add_argument("--lengths", type=int, nargs="+", default=[200, 200, 200], help="sequences of the micro-batch")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vocab = save_model(args.model, Path(tmp))
        layers = len(select_layers(AutoConfig.from_pretrained(tmp).num_hidden_layers, CFG.layers))
        for sp in args.sp:
            ranks = spawn_cpu_group(sp, rank_counts, tmp, sp, args.lengths, vocab)
            for rank, counts in enumerate(ranks):
                stock, cap = counts["stock"], counts["capture"]
                coll = extra(stock["collectives"], cap["collectives"])
                row = {
                    "sp": sp,
                    "rank": rank,
                    "tokens": sum(args.lengths),
                    "ops_stock": stock["ops"],
                    "ops_added_per_layer": (cap["ops"] - stock["ops"]) / layers,
                    "syncs_added": extra(stock["syncs"], cap["syncs"]),
                    "collectives_added": coll,
                    "bytes_added": sum(b for _, b in coll),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
