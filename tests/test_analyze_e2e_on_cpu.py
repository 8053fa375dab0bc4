# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""``verl-rhythm analyze`` end to end on a tiny random Llama (GQA) and a character tokenizer built in-process.

Every artefact is written, and the numbers of ``summary.json`` are checked against independent computations on
the same inputs: γ and the token roles against the credit core (:func:`verl_rhythm.credit.compute_gamma`), WAAD
and FAI against the dense reference on eager attention maps, entropy against the eager logits, the heatmap against
the dense maps, and the coupling statistics against a brute-force reading of the peak definition.
"""

import io
import json
import math
import string

import pytest
import torch
from models import tiny_model
from test_analyze_coupling_on_cpu import peaks_brute

from verl_rhythm.cli import main
from verl_rhythm.credit import compute_gamma
from verl_rhythm.measure.heads import group_heads
from verl_rhythm.testing.dense import attention_maps_for_sequence, rhythm_dense

EOS = "<|im_end|>"
PROMPTS = ["What is 12 + 7? Think step by step.", "Tom has 3 apples and buys 5 more. How many now?", "Hi"]
# small horizons so that FAI is non-zero on short responses; every other knob at a non-default value as well
KNOBS = {"waad_window": 4, "fai_horizon_lo": 2, "fai_horizon_hi": 12, "top_q": 0.3, "gamma_amp": 1.7, "alpha": 0.4}


def tiny_tokenizer():
    """A 128-token character-level fast tokenizer (printable ASCII, ChatML specials, fillers), no chat template.

    Built with the ``tokenizers`` library, so it decodes every id the tiny model (vocab 128) can emit.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", EOS]
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    vocab.update({f"<extra_{i}>": i for i in range(len(vocab), 128)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token=EOS, pad_token=EOS)


def tiny_checkpoint(path):
    """Save the tiny Llama-GQA model (eos = the tokenizer's ``<|im_end|>``) and the tokenizer to ``path``."""
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama_gqa", num_layers=6, attn_implementation="sdpa", seed=0)
    eos = tokenizer.convert_tokens_to_ids(EOS)
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    model.config.pad_token_id = model.generation_config.pad_token_id = eos
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_cli(model_dir, out_dir, *extra):
    # one thread: a tiny model gains nothing from more, and a CPU shared with other jobs loses a lot
    args = ["analyze", "--model", str(model_dir), "--out", str(out_dir), "--max-new-tokens", "40", "--quiet"]
    args += ["--threads", "1"]
    for p in PROMPTS:
        args += ["--prompt", p]
    for key, value in KNOBS.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    assert main(args + list(extra)) == 0
    return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    model_dir = tiny_checkpoint(root / "model")
    out = root / "out"
    summary = run_cli(model_dir, out, "--heatmap-window", "16", "--device", "cpu")
    return model_dir, out, summary


@pytest.fixture(scope="module")
def eager(report):
    """The same checkpoint with eager attention: maps and logits of every prompt + response."""
    from transformers import AutoModelForCausalLM

    model_dir, _, summary = report
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    out = []
    with torch.no_grad():
        for seq in summary["sequences"]:
            ids = torch.tensor([seq["prompt_token_ids"] + seq["token_ids"]])
            res = model(input_ids=ids, output_attentions=True)
            out.append((res.attentions, res.logits[0]))
    return out


def test_every_artefact_is_written(report):
    _, out, summary = report
    n = len(PROMPTS)
    expected = {"report.html", "summary.json", "head_spans.png", "heatmap.png"} | {
        f"trace_{i:02d}.png" for i in range(n)
    }
    assert set(summary["artefacts"]) == expected
    for name in expected:
        data = (out / name).read_bytes()
        assert len(data) > 1000, name
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n", name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == n + 2  # self-contained: every plot inlined
    assert "src='http" not in html and "href='http" not in html
    total = sum(s["response_tokens"] for s in summary["sequences"])
    assert html.count("<span class='t") == total  # one span per response token
    assert [s["prompt"] for s in summary["sequences"]] == PROMPTS


def test_summary_records_the_settings(report):
    _, _, summary = report
    for key, value in KNOBS.items():
        assert summary["config"][key] == value
    assert summary["layers"] == [2, 3, 4]  # round(linspace(6 // 3, 2 * 6 // 3, 5)) de-duplicated
    assert summary["model"]["num_heads"] == 8 and summary["model"]["num_kv_heads"] == 2
    assert summary["generation"]["do_sample"] is False
    assert summary["strategies"] == ["coupled", "local", "global"]


def test_gamma_and_roles_equal_the_credit_core(report):
    _, _, summary = report
    cfg, seqs = summary["config"], summary["sequences"]
    width = max(s["response_tokens"] for s in seqs)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    waad, fai = torch.zeros(len(seqs), width), torch.zeros(len(seqs), width)
    for i, s in enumerate(seqs):
        n = s["response_tokens"]
        mask[i, :n] = True
        waad[i, :n], fai[i, :n] = torch.tensor(s["waad"]), torch.tensor(s["fai"])
    knobs = dict(top_q=cfg["top_q"], gamma_amp=cfg["gamma_amp"], alpha=cfg["alpha"], intro_window=cfg["intro_window"])
    assert any(s["response_tokens"] >= 2 for s in seqs)
    for strategy in summary["strategies"]:
        credit = compute_gamma(strategy, mask, waad=waad, fai=fai, **knobs)
        for i, s in enumerate(seqs):
            n = s["response_tokens"]
            assert torch.equal(torch.tensor(s["gamma"][strategy]), credit.gamma[i, :n]), (strategy, i)
            if strategy == "coupled":
                assert s["preplan"] == credit.preplan[i, :n].tolist()
                assert s["anchor"] == credit.anchor[i, :n].tolist()
                assert s["dominated"] == credit.dominated[i, :n].tolist()
                assert s["intro"] == credit.intro[i, :n].tolist()
                assert torch.equal(torch.tensor(s["delta"]), credit.delta[i, :n])
                assert s["counts"]["preplan"] == int(credit.preplan[i].sum())
                assert s["counts"]["gamma_mean"]["coupled"] == pytest.approx(float(credit.gamma[i, :n].mean()))


def test_waad_fai_and_entropy_equal_the_dense_reference(report, eager):
    _, _, summary = report
    cfg = summary["config"]
    for seq, (attentions, logits) in zip(summary["sequences"], eager, strict=True):
        p, n = seq["prompt_tokens"], seq["response_tokens"]
        resp = torch.arange(p + n) >= p
        maps, heads = attention_maps_for_sequence(attentions, summary["layers"], 0, torch.arange(p + n))
        ref = rhythm_dense(
            maps, resp, heads, cfg["waad_window"], cfg["fai_horizon_lo"], cfg["fai_horizon_hi"], cfg["head_quantile"]
        )
        torch.testing.assert_close(torch.tensor(seq["waad"]), ref.waad[p:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(seq["fai"]), ref.fai[p:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(torch.tensor(seq["head_span"]), ref.span, atol=1e-3, rtol=1e-4)
        labels = [f"L{heads[i][0]}H{heads[i][1]}" for i in ref.local_heads.tolist()]
        assert seq["local_heads"] == labels
        logp = torch.log_softmax(logits[p - 1 : p + n - 1].double(), -1)
        entropy = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(torch.tensor(seq["entropy"], dtype=torch.float64), entropy, atol=1e-4, rtol=1e-4)
    assert any(max(s["fai"]) > 0 for s in summary["sequences"])


def test_heatmap_equals_the_dense_maps(report, eager):
    _, _, summary = report
    heat = summary["heatmap"]
    seq = summary["sequences"][heat["sequence"]]
    p = seq["prompt_tokens"]
    lo, hi = p + heat["response_start"], p + heat["response_stop"]
    assert heat["response_start"] == 0 and heat["response_stop"] == min(16, seq["response_tokens"])
    layer, head = (int(x) for x in heat["head"][1:].split("H"))
    dense = eager[heat["sequence"]][0][layer][0, head, lo:hi, lo:hi]
    torch.testing.assert_close(torch.tensor(heat["map"]), dense, atol=1e-5, rtol=1e-4)
    assert heat["head"] == seq["local_heads"][0]
    assert heat["tokens"] == seq["tokens"][heat["response_start"] : heat["response_stop"]]


def test_coupling_statistics_follow_the_peak_definition(report):
    _, _, summary = report
    c = summary["coupling"]
    radius, top_q, window = c["peak_radius"], c["peak_top_q"], c["follow_window"]
    assert window == summary["config"]["intro_window"]
    hits = base = n_fai = 0
    ent_peaks, ent_all, n_wp, n_all = [], 0.0, 0, 0
    for s in summary["sequences"]:
        wp, fp = peaks_brute(s["waad"], radius, top_q), peaks_brute(s["fai"], radius, top_q)
        assert s["coupling"]["waad_peaks"] == wp and s["coupling"]["fai_peaks"] == fp
        n = s["response_tokens"]
        for f in fp:
            win = range(max(0, f - window), f + 1)
            hits += any(u in wp for u in win)
            base += 1 - math.comb(n - len(win), len(wp)) / math.comb(n, len(wp)) if n - len(win) >= len(wp) else 1.0
        n_fai += len(fp)
        ent_peaks += [s["entropy"][i] for i in wp]
        n_wp += len(wp)
        ent_all += sum(s["entropy"])
        n_all += n
    assert c["fai_peaks"] == n_fai and c["waad_peaks"] == n_wp and c["tokens"] == n_all
    assert n_fai > 0 and n_wp > 0, "the tiny run should have peaks to count"
    assert c["fai_follows_waad_hits"] == hits
    assert c["fai_follows_waad_random"] == pytest.approx(base / n_fai)
    assert c["entropy_mean"] == pytest.approx(ent_all / n_all)
    assert c["entropy_at_waad_peaks"] == pytest.approx(sum(ent_peaks) / n_wp)
    assert "peak" in c["definition"].lower() and f"[s - {window}, s]" in c["definition"]


def test_totals_pool_the_sequences(report):
    _, _, summary = report
    seqs, t = summary["sequences"], summary["totals"]
    n = sum(s["response_tokens"] for s in seqs)
    assert t["response_tokens"] == n
    assert t["anchor"] == sum(sum(s["anchor"]) for s in seqs)
    assert t["intro_tokens"] == sum(sum(x > 0 for x in s["intro"]) for s in seqs)
    for g in summary["strategies"]:
        assert t["gamma_mean"][g] == pytest.approx(sum(sum(s["gamma"][g]) for s in seqs) / n)


def test_micro_batch_scope_sampling_and_threads(report, tmp_path):
    model_dir, _, greedy = report
    threads = torch.get_num_threads()
    summary = run_cli(
        model_dir, tmp_path, "--head-group-scope", "micro_batch", "--sample", "--seed", "3", "--batch-size", "2",
        "--strategy", "entropy",
    )  # fmt: skip
    assert summary["model"]["threads"] == 1 and torch.get_num_threads() == threads  # restored after the run
    assert summary["config"]["head_group_scope"] == "micro_batch"
    assert summary["strategies"] == ["coupled", "local", "global", "entropy"]
    seqs = summary["sequences"]
    assert any(a["token_ids"] != b["token_ids"] for a, b in zip(seqs, greedy["sequences"], strict=True))
    # micro-batch scope: capture forwards of 2 sequences, each grouped once by its mean head span
    heads = [tuple(int(x) for x in label[1:].split("H")) for label in summary["heads"]["labels"]]
    for batch in (seqs[0:2], seqs[2:3]):
        mean_span = torch.stack([torch.tensor(s["head_span"]) for s in batch]).mean(0)
        local, glob = group_heads(mean_span, heads, summary["config"]["head_quantile"])
        for s in batch:
            assert s["local_heads"] == [summary["heads"]["labels"][i] for i in local.tolist()]
            assert s["global_heads"] == [summary["heads"]["labels"][i] for i in glob.tolist()]
    for s in seqs:
        credit = compute_gamma(
            "entropy", torch.ones(1, s["response_tokens"], dtype=torch.bool),
            entropy=torch.tensor([s["entropy"]]), top_q=KNOBS["top_q"], gamma_amp=KNOBS["gamma_amp"],
        )  # fmt: skip
        assert s["gamma"]["entropy"] == credit.gamma[0].tolist()


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--top-q", "1.5"], "--top-q"),
        (["--strategy", "best"], "--strategy"),
        (["--fai-horizon-lo", "50", "--fai-horizon-hi", "20"], "--fai-horizon-hi"),
        (["--layers", "1,x"], "--layers"),
    ],
)
def test_bad_settings_name_the_flag(args, flag, capsys):
    with pytest.raises(SystemExit) as err:
        main(["analyze", "--quiet", *args])
    assert err.value.code == 2
    assert flag in capsys.readouterr().err


def test_layer_outside_the_model_names_the_flag(report, tmp_path, capsys):
    model_dir, _, _ = report
    with pytest.raises(SystemExit) as err:
        main(["analyze", "--model", str(model_dir), "--out", str(tmp_path), "--quiet", "--layers", "2,9"])
    assert err.value.code == 2
    assert "--layers" in capsys.readouterr().err


def test_auto_threads_drop_to_one_on_a_busy_cpu(monkeypatch):
    from verl_rhythm.analyze import pipeline
    from verl_rhythm.analyze.progress import Progress

    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    stream = io.StringIO()
    progress = Progress(stream=stream)
    monkeypatch.setattr(pipeline.os, "getloadavg", lambda: (2.3, 1.0, 1.0))
    assert pipeline._auto_threads("cpu", progress) == 1
    assert "busy" in stream.getvalue()
    assert pipeline._auto_threads("cuda", progress) == 2
    monkeypatch.setattr(pipeline.os, "getloadavg", lambda: (0.7, 1.0, 1.0))
    assert pipeline._auto_threads("cpu", progress) == 2
