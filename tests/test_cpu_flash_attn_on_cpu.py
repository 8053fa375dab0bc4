# Copyright 2026 The verl-rhythm Authors
# SPDX-License-Identifier: Apache-2.0
"""The CPU flash-attn (``verl_rhythm.backends.cpu.flash_attn``) against a float64 dense reference, its strict mode,
and its routing of transformers' ``flash_attention_2`` and verl's ``attention_utils`` on CPU."""

import functools
import importlib
import importlib.machinery
import sys
import zlib

import pytest
import torch

import verl_rhythm.backends.cpu.flash_attn as cpu_fa
from verl_rhythm.backends.cpu.flash_attn import bert_padding
from verl_rhythm.backends.cpu.flash_attn import install as fa_install

# ---------------------------------------------------------------------------------------------------------------
# the float64 dense reference, written from flash-attn's definitions
# ---------------------------------------------------------------------------------------------------------------


def reference(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, alibi=None, scale=None):
    """One sequence: q ``(Sq, H, D)``, k ``(Sk, H_kv, D)``, v ``(Sk, H_kv, Dv)``, alibi ``(H,)`` or None.

    Returns out ``(Sq, H, Dv)`` and lse ``(H, Sq)`` in float64; a row that sees no key has out 0 and lse +inf.
    """
    q, k, v = q.double(), k.double(), v.double()
    seqlen_q, num_heads, head_dim = q.shape
    seqlen_k, num_heads_k, _ = k.shape
    k = k.repeat_interleave(num_heads // num_heads_k, dim=1)
    v = v.repeat_interleave(num_heads // num_heads_k, dim=1)
    scale = head_dim**-0.5 if scale is None else scale
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    i = torch.arange(seqlen_q)[:, None]
    j = torch.arange(seqlen_k)[None, :]
    diag = i + seqlen_k - seqlen_q  # the key aligned with query i (bottom-right)
    if alibi is not None:
        s = s - alibi.double()[:, None, None] * (diag - j).abs()
    keep = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool)
    if causal:
        keep &= j <= diag
    if window[0] >= 0:
        keep &= j >= diag - window[0]
    if window[1] >= 0:
        keep &= j <= diag + window[1]
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # (H, Sq), -inf for an empty row
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("hqk,khe->qhe", p, v)
    return out, torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)


TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def assert_close(actual, expected, dtype, what):
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isfinite(actual), finite), f"{what}: finite pattern differs"
    assert torch.equal(actual[~finite], expected[~finite].to(actual.dtype)), f"{what}: infinities differ"
    err = (actual.double()[finite] - expected[finite]).abs().max().item() if finite.any() else 0.0
    assert err <= TOL[dtype], f"{what}: max error {err} > {TOL[dtype]}"


# (H, H_kv, Sq, Sk, causal, window, softcap, alibi)
CASES = [
    (8, 2, 13, 13, True, (-1, -1), 0.0, False),  # GQA causal, Sq == Sk
    (4, 4, 13, 13, False, (-1, -1), 0.0, False),  # MHA, full attention
    (8, 2, 5, 17, True, (-1, -1), 0.0, False),  # Sq < Sk: bottom-right causal
    (8, 2, 1, 17, True, (-1, -1), 0.0, False),  # decoding step
    (8, 2, 17, 5, True, (-1, -1), 0.0, False),  # Sq > Sk: first rows see no key
    (8, 2, 16, 16, True, (4, 0), 0.0, False),  # causal sliding window (w, 0)
    (8, 2, 16, 16, False, (3, 3), 0.0, False),  # symmetric window (w, w)
    (8, 2, 6, 16, False, (2, 5), 0.0, False),  # asymmetric window, Sq < Sk
    (8, 2, 6, 16, True, (3, 7), 0.0, False),  # window intersected with causal
    (8, 2, 14, 14, True, (-1, -1), 2.5, False),  # softcap
    (8, 2, 9, 14, True, (-1, -1), 0.0, True),  # alibi, causal
    (4, 2, 9, 14, False, (4, 2), 3.0, True),  # alibi + softcap + window, non-causal
    (8, 1, 1, 9, False, (2, -1), 0.0, False),  # MQA decoding with a window
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=[f"case{n}" for n in range(len(CASES))])
def test_flash_attn_func_matches_reference(case, dtype):
    torch.manual_seed(zlib.crc32(repr((case, dtype)).encode()))
    num_heads, num_heads_k, seqlen_q, seqlen_k, causal, window, softcap, use_alibi = case
    batch, head_dim = 2, 16
    q = rand(batch, seqlen_q, num_heads, head_dim, dtype=dtype, scale=2.0)
    k = rand(batch, seqlen_k, num_heads_k, head_dim, dtype=dtype, scale=2.0)
    v = rand(batch, seqlen_k, num_heads_k, head_dim, dtype=dtype)
    alibi = torch.rand(batch, num_heads, dtype=torch.float32) if use_alibi else None
    out, lse, probs = cpu_fa.flash_attn_func(
        q, k, v, causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi, return_attn_probs=True
    )
    assert out.dtype == dtype and out.shape == (batch, seqlen_q, num_heads, head_dim) and probs is None
    assert lse.shape == (batch, num_heads, seqlen_q)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for b in range(batch):
        ref_out, ref_lse = reference(
            q[b], k[b], v[b], causal=causal, window=window, softcap=softcap, alibi=None if alibi is None else alibi[b]
        )
        assert_close(out[b], ref_out, dtype, f"out[{b}]")
        assert_close(lse[b], ref_lse, dtype if dtype != torch.bfloat16 else torch.float32, f"lse[{b}]")
    plain = cpu_fa.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap, alibi_slopes=alibi)
    assert torch.equal(plain, out)


def test_softmax_scale_and_value_head_dim():
    torch.manual_seed(1)
    q, k, v = rand(1, 7, 4, 8, dtype=torch.float64), rand(1, 9, 2, 8, dtype=torch.float64), rand(1, 9, 2, 5)
    out = cpu_fa.flash_attn_func(q, k, v.double(), softmax_scale=0.3, causal=True)
    ref, _ = reference(q[0], k[0], v[0], causal=True, scale=0.3)
    assert_close(out[0], ref, torch.float64, "out")


def test_window_at_least_seqlen_k_is_unbounded_as_in_the_kernels():
    """flash_api.cpp: ``if (window_size_right >= seqlen_k) window_size_right = -1`` (visible when Sq > Sk)."""
    torch.manual_seed(2)
    q, k, v = rand(1, 12, 2, 8), rand(1, 4, 2, 8), rand(1, 4, 2, 8)
    windowed = cpu_fa.flash_attn_func(q, k, v, window_size=(-1, 4))
    assert torch.equal(windowed, cpu_fa.flash_attn_func(q, k, v))
    narrower = cpu_fa.flash_attn_func(q, k, v, window_size=(-1, 3))
    ref, _ = reference(q[0], k[0], v[0], window=(-1, 3))
    assert_close(narrower[0], ref, torch.float32, "out")


VARLEN = [  # (lengths_q, lengths_k, causal, window, softcap, alibi)
    ([5, 1, 9, 3], [5, 1, 9, 3], True, (-1, -1), 0.0, False),
    ([5, 1, 9, 3], [7, 1, 12, 3], True, (-1, -1), 0.0, False),  # cu_seqlens_q != cu_seqlens_k
    ([1, 1, 1], [6, 1, 11], True, (-1, -1), 0.0, False),  # decoding rows
    ([4, 6, 1], [2, 9, 1], True, (-1, -1), 0.0, True),  # Sq > Sk in the first sequence; alibi (B, H)
    ([8, 3, 10], [8, 5, 10], True, (3, 0), 0.0, False),
    ([8, 3, 10], [8, 5, 10], False, (2, 2), 4.0, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", VARLEN, ids=[f"varlen{n}" for n in range(len(VARLEN))])
def test_flash_attn_varlen_func_matches_reference(case, dtype):
    torch.manual_seed(zlib.crc32(repr((case, dtype)).encode()))
    lengths_q, lengths_k, causal, window, softcap, use_alibi = case
    num_heads, num_heads_k, head_dim = 8, 2, 16
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32)
    q = rand(int(cu_q[-1]), num_heads, head_dim, dtype=dtype, scale=2.0)
    k = rand(int(cu_k[-1]), num_heads_k, head_dim, dtype=dtype, scale=2.0)
    v = rand(int(cu_k[-1]), num_heads_k, head_dim, dtype=dtype)
    alibi = torch.rand(len(lengths_q), num_heads) if use_alibi else None
    out, lse, _ = cpu_fa.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, torch.tensor(max(lengths_q)), max(lengths_k), causal=causal, window_size=window,
        softcap=softcap, alibi_slopes=alibi, return_attn_probs=True,
    )  # fmt: skip
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (num_heads, q.shape[0])
    for b in range(len(lengths_q)):
        sq, sk = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        ref_out, ref_lse = reference(
            q[sq], k[sk], v[sk], causal=causal, window=window, softcap=softcap,
            alibi=None if alibi is None else alibi[b],
        )  # fmt: skip
        assert_close(out[sq], ref_out, dtype, f"out of sequence {b}")
        assert_close(lse[:, sq], ref_lse, torch.float32, f"lse of sequence {b}")


def test_query_chunking(monkeypatch):
    """A sequence longer than the chunk: the rows go through several chunks and the result is unchanged."""
    torch.manual_seed(3)
    q, k, v = rand(1, 300, 4, 8, scale=2.0), rand(1, 300, 2, 8, scale=2.0), rand(1, 300, 2, 8)
    calls = []
    stock = cpu_fa._attend_rows

    def counting(q_rows, *args):
        calls.append(q_rows.shape[1])
        return stock(q_rows, *args)

    monkeypatch.setattr(cpu_fa, "_attend_rows", counting)
    out = cpu_fa.flash_attn_func(q, k, v, causal=True, window_size=(40, 0))
    assert calls == [cpu_fa.QUERY_CHUNK_ROWS, 300 - cpu_fa.QUERY_CHUNK_ROWS]
    ref, _ = reference(q[0], k[0], v[0], causal=True, window=(40, 0))
    assert_close(out[0], ref, torch.float32, "out")
    calls.clear()
    monkeypatch.setattr(cpu_fa, "MAX_CHUNK_ELEMENTS", 4 * 300 * 7)  # H * Sk * 7 rows
    assert torch.allclose(cpu_fa.flash_attn_func(q, k, v, causal=True, window_size=(40, 0)), out, atol=1e-6)
    assert calls == [7] * (300 // 7) + [300 % 7]


def test_backward_matches_reference(monkeypatch):
    """Gradients through the chunked, recomputed path equal autograd through the float64 reference."""
    monkeypatch.setattr(cpu_fa, "QUERY_CHUNK_ROWS", 5)
    torch.manual_seed(4)
    lengths = [7, 1, 12]
    cu = torch.tensor([0, 7, 8, 20], dtype=torch.int32)
    q = rand(20, 4, 8, dtype=torch.float64, scale=2.0).requires_grad_()
    k = rand(20, 2, 8, dtype=torch.float64, scale=2.0).requires_grad_()
    v = rand(20, 2, 8, dtype=torch.float64).requires_grad_()
    weight = rand(20, 4, 8, dtype=torch.float64)
    out, lse, _ = cpu_fa.flash_attn_varlen_func(
        q, k, v, cu, cu, max(lengths), max(lengths), causal=True, softcap=3.0, return_attn_probs=True
    )
    ((out * weight).sum() + lse.sum()).backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    total = 0.0
    for b in range(3):
        s = slice(int(cu[b]), int(cu[b + 1]))
        ref_out, ref_lse = reference(q[s], k[s], v[s], causal=True, softcap=3.0)
        total = total + (ref_out * weight[s]).sum() + ref_lse.sum()
    total.backward()
    for name, got, t in zip("qkv", grads, (q, k, v), strict=True):
        assert torch.allclose(got, t.grad, atol=1e-10), f"d{name} differs"


def test_argument_errors():
    q, k = rand(1, 4, 6, 8), rand(1, 4, 4, 8)
    with pytest.raises(RuntimeError, match="Number of heads in key/value must divide number of heads in query"):
        cpu_fa.flash_attn_func(q, k, k)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="block_table"):
        cpu_fa.flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 4, 4, block_table=torch.zeros(1, 1, dtype=torch.int32))
    with pytest.raises(NotImplementedError, match="flash_attn_with_kvcache"):
        cpu_fa.flash_attn_with_kvcache(q, q, q, cache_seqlens=4)
    with pytest.raises(RuntimeError, match="non-decreasing"):
        cpu_fa.flash_attn_varlen_func(q[0], q[0], q[0], cu, torch.tensor([0, 9], dtype=torch.int32), 4, 9)


# ---------------------------------------------------------------------------------------------------------------
# strict mode
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def strict():
    with fa_install.strict_mode():
        yield


def test_strict_mode_switches():
    assert not fa_install.is_strict()
    with fa_install.strict_mode():
        assert fa_install.is_strict() and cpu_fa.is_strict()
        with fa_install.strict_mode(False):
            assert not fa_install.is_strict()
        assert fa_install.is_strict()
    assert not fa_install.is_strict()
    assert fa_install.set_strict(True) is False and fa_install.set_strict(False) is True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_strict_rejects_full_precision(strict, dtype):
    q = rand(1, 4, 2, 8, dtype=dtype)
    with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16 data type"):
        cpu_fa.flash_attn_func(q, q, q)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16 data type"):
        cpu_fa.flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 4, 4)


def test_strict_rejects_what_the_kernels_reject(strict):
    q = rand(1, 4, 2, 8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="query and key must have the same dtype"):
        cpu_fa.flash_attn_func(q, q.half(), q)
    with pytest.raises(RuntimeError, match="query and value must have the same dtype"):
        cpu_fa.flash_attn_func(q, q, q.half())
    big = rand(1, 4, 2, 264, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="FlashAttention forward only supports head dimension at most 256"):
        cpu_fa.flash_attn_func(big, big, big)
    odd = rand(1, 4, 2, 257, dtype=torch.bfloat16)  # flash-attn pads to 264 before its check
    with pytest.raises(RuntimeError, match="FlashAttention forward only supports head dimension at most 256"):
        cpu_fa.flash_attn_func(odd, odd, odd)
    with pytest.raises(RuntimeError, match=r"v must have shape \(batch_size, seqlen_k, num_heads_k, head_size\)"):
        cpu_fa.flash_attn_func(q, q, rand(1, 4, 2, 16, dtype=torch.bfloat16))
    for name, cu_q, cu_k in (
        ("cu_seqlens_q", torch.tensor([0, 4]), torch.tensor([0, 4], dtype=torch.int32)),
        ("cu_seqlens_k", torch.tensor([0, 4], dtype=torch.int32), torch.tensor([0, 4])),
    ):
        with pytest.raises(RuntimeError, match=f"{name} must have dtype int32"):
            cpu_fa.flash_attn_varlen_func(q[0], q[0], q[0], cu_q, cu_k, 4, 4)
    with pytest.raises(RuntimeError, match="Softcapping does not support dropout for now"):
        cpu_fa.flash_attn_func(q, q, q, dropout_p=0.1, softcap=2.0)
    with pytest.raises(RuntimeError, match="ALiBi slopes must have dtype fp32"):
        cpu_fa.flash_attn_func(q, q, q, alibi_slopes=torch.ones(2, dtype=torch.float64))


def test_strict_accepts_half_precision_and_what_flash_attn_makes_contiguous(strict):
    torch.manual_seed(5)
    for dtype in (torch.bfloat16, torch.float16):
        q = rand(2, 6, 4, 8, dtype=dtype)
        kv = rand(2, 6, 2, 8, dtype=dtype)
        out = cpu_fa.flash_attn_func(q, kv, kv, causal=True)
        assert out.dtype == dtype
        cu = torch.tensor([0, 6, 12], dtype=torch.int32)
        varlen = cpu_fa.flash_attn_varlen_func(
            q.flatten(0, 1), kv.flatten(0, 1), kv.flatten(0, 1), cu, cu, 6, 6, causal=True
        )
        for b in range(2):  # each sequence against the float64 reference, to its dtype's rounding
            ref, _ = reference(q[b], kv[b], kv[b], causal=True)
            assert_close(out[b], ref, dtype, f"{dtype} flash_attn_func row {b}")
            assert_close(varlen[6 * b : 6 * (b + 1)], ref, dtype, f"{dtype} flash_attn_varlen_func sequence {b}")
        # the two entry points agree to the dtype's own rounding (torch's default tolerances for fp16 / bf16)
        torch.testing.assert_close(varlen, out.flatten(0, 1))
    # flash-attn's Python layer calls maybe_contiguous() before the kernel's "contiguous last dimension" check
    wide = rand(2, 6, 4, 16, dtype=torch.bfloat16)
    strided = wide[..., ::2]
    assert strided.stride(-1) != 1
    assert torch.equal(
        cpu_fa.flash_attn_func(strided, strided, strided), cpu_fa.flash_attn_func(*[strided.contiguous()] * 3)
    )


def test_outside_strict_mode_full_precision_is_accepted():
    assert not fa_install.is_strict()
    q = rand(1, 5, 2, 8)
    cu = torch.tensor([0, 5], dtype=torch.int64)
    out = cpu_fa.flash_attn_varlen_func(q[0], q[0], q[0], cu, cu, 5, 5, causal=True)
    assert out.dtype == torch.float32 and torch.equal(out, cpu_fa.flash_attn_func(q, q, q, causal=True)[0])


# ---------------------------------------------------------------------------------------------------------------
# bert_padding and verl's attention_utils
# ---------------------------------------------------------------------------------------------------------------


def test_bert_padding_round_trip():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    hidden = torch.randn(3, 5, 2, 3, requires_grad=True)
    packed, indices, cu, max_len, used = bert_padding.unpad_input(hidden, mask)
    assert packed.shape == (9, 2, 3) and cu.dtype == torch.int32 and isinstance(max_len, int)
    assert cu.tolist() == [0, 3, 8, 9] and max_len == 5 and used.tolist() == [3, 5, 1]
    assert torch.equal(packed, hidden.reshape(15, 2, 3)[mask.flatten().bool()])
    assert torch.equal(bert_padding.index_first_axis(hidden.reshape(15, 2, 3), indices), packed)
    padded = bert_padding.pad_input(packed, indices, 3, 5)
    assert torch.equal(padded, hidden * mask[..., None, None])
    padded.sum().backward()
    assert torch.equal(hidden.grad, mask[..., None, None].float().expand_as(hidden))
    unused = torch.tensor([[0, 1, 0, 0, 0], [0] * 5, [0] * 5])
    packed, _, cu, max_len, used = bert_padding.unpad_input(hidden, mask, unused)
    assert cu.tolist() == [0, 4, 9, 10] and used.tolist() == [3, 5, 1] and packed.shape[0] == 10


# ---------------------------------------------------------------------------------------------------------------
# install / uninstall and transformers' routing
# ---------------------------------------------------------------------------------------------------------------


def _transformers_state():
    import transformers.modeling_flash_attention_utils as mfa
    from transformers.modeling_utils import PreTrainedModel

    return (
        mfa.is_flash_attn_2_available,
        mfa.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]["general_availability_check"],
        PreTrainedModel.__dict__["_flash_attn_can_dispatch"],
        sys.modules.get("flash_attn"),
        sys.modules.get("flash_attn.bert_padding"),
    )


def _skip_if_real_flash_attn():
    """The CPU flash-attn refuses to install next to a real one (a GPU machine with flash-attn)."""
    module = sys.modules.get("flash_attn")
    if (module is not None and module is not cpu_fa) or (module is None and importlib.util.find_spec("flash_attn")):
        pytest.skip("a real flash_attn is importable; the CPU implementation does not install next to it")


@pytest.fixture
def installed():
    _skip_if_real_flash_attn()
    fa_install.uninstall()
    fa_install.install()
    yield
    fa_install.uninstall()


def test_install_and_uninstall_restore_transformers_exactly():
    import transformers.modeling_flash_attention_utils as mfa

    _skip_if_real_flash_attn()
    fa_install.uninstall()
    before = _transformers_state()
    assert before[3] is None and not fa_install.is_installed()
    fa_install.install()
    during = _transformers_state()
    fa_install.install()  # idempotent
    assert all(a is b for a, b in zip(_transformers_state(), during, strict=True))
    assert fa_install.is_installed() and mfa._loaded_implementation is None
    assert during[0]() and during[1]() and during[2] is not before[2]
    assert during[3] is cpu_fa and during[4] is bert_padding
    import flash_attn
    from flash_attn.bert_padding import index_first_axis, pad_input, rearrange, unpad_input  # noqa: F401 (verl's)

    assert flash_attn is cpu_fa and flash_attn.__version__ == "2.8.3" and unpad_input is bert_padding.unpad_input
    with pytest.raises(ModuleNotFoundError):  # verl's optional fused cross-entropy stays unavailable
        importlib.import_module("flash_attn.ops.triton.cross_entropy")
    fa_install.uninstall()
    after = _transformers_state()
    assert all(a is b for a, b in zip(after, before, strict=True)) and not fa_install.is_installed()
    assert mfa._loaded_implementation is None
    fa_install.uninstall()  # idempotent
    assert all(a is b for a, b in zip(_transformers_state(), before, strict=True))
    with pytest.raises(ImportError):
        importlib.import_module("flash_attn")


def test_install_refuses_when_another_flash_attn_is_findable(monkeypatch):
    fa_install.uninstall()
    before = _transformers_state()
    real_find_spec = importlib.util.find_spec

    def find_spec(name, package=None):
        if name == "flash_attn":
            return importlib.machinery.ModuleSpec("flash_attn", None, origin="/site-packages/flash_attn/__init__.py")
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(RuntimeError, match="never shadows a real flash-attn"):
        fa_install.install()
    assert all(a is b for a, b in zip(_transformers_state(), before, strict=True)) and not fa_install.is_installed()
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "flash_attn", type(sys)("flash_attn"))
    with pytest.raises(RuntimeError, match="already imported"):
        fa_install.install()
    assert not fa_install.is_installed()


def test_verl_attention_utils_resolve_to_bert_padding(installed):
    pytest.importorskip("verl", reason="verl is not installed (the matrix's transformers > 5.10 environments)")
    from verl.utils import attention_utils

    for name in ("_index_first_axis", "_pad_input", "_rearrange", "_unpad_input"):
        setattr(attention_utils, name, None)
    funcs = attention_utils._get_attention_functions()
    expected = (bert_padding.index_first_axis, bert_padding.pad_input, bert_padding.rearrange, bert_padding.unpad_input)
    assert all(a is b for a, b in zip(funcs, expected, strict=True))
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    hidden = torch.randn(3, 4, 5)
    packed, indices, cu, max_len, _ = attention_utils.unpad_input(hidden, mask)
    assert cu.tolist() == [0, 3, 7, 8] and max_len == 4
    assert torch.equal(attention_utils.index_first_axis(hidden.reshape(12, 5), indices), packed)
    assert torch.equal(attention_utils.pad_input(packed, indices, 3, 4), hidden * mask[..., None])
    for name in ("_index_first_axis", "_pad_input", "_rearrange", "_unpad_input"):
        setattr(attention_utils, name, None)


@pytest.fixture
def spies(monkeypatch):
    """Count the calls transformers makes to the CPU functions (and the query dtypes they see)."""
    import transformers.modeling_flash_attention_utils as mfa

    calls = {"flash_attn_func": [], "flash_attn_varlen_func": []}
    for name in calls:
        stock = getattr(cpu_fa, name)

        def spy(q, *args, _stock=stock, _name=name, **kwargs):
            calls[_name].append(q.dtype)
            return _stock(q, *args, **kwargs)

        monkeypatch.setattr(cpu_fa, name, functools.wraps(stock)(spy))
    mfa._loaded_implementation = None  # transformers imports the names again, now the spies
    yield calls
    mfa._loaded_implementation = None


def _pair(num_layers=2, dtype=torch.float32):
    """The same tiny Llama (GQA) twice: eager and flash_attention_2."""
    from models import tiny_model

    eager = tiny_model("llama_gqa", num_layers=num_layers).to(dtype)
    flash = tiny_model("llama_gqa", num_layers=num_layers).to(dtype)
    flash.set_attn_implementation("flash_attention_2")
    assert flash.config._attn_implementation == "flash_attention_2"
    assert all(torch.equal(a, b) for a, b in zip(eager.parameters(), flash.parameters(), strict=True))
    return eager, flash


def test_transformers_flash_attention_2_equals_eager(installed, spies):
    eager, flash = _pair()
    torch.manual_seed(6)
    with torch.no_grad():
        # (a) padded batch, left padding, 2-D mask -> varlen
        ids = torch.randint(0, 128, (3, 11))
        mask = torch.ones(3, 11, dtype=torch.long)
        mask[0, :4] = 0
        mask[2, :9] = 0
        got, ref = flash(ids, attention_mask=mask).logits, eager(ids, attention_mask=mask).logits
        valid = mask.bool()
        assert torch.allclose(got[valid], ref[valid], atol=1e-5), (got - ref)[valid].abs().max()
        assert len(spies["flash_attn_varlen_func"]) == 2 and not spies["flash_attn_func"]
        # (b) one packed row of three sequences, position_ids restarting at 0 -> varlen
        lengths = [5, 3, 7]
        packed = torch.randint(0, 128, (1, sum(lengths)))
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        got = flash(packed, position_ids=position_ids, use_cache=False).logits[0]
        pieces = packed[0].split(lengths)
        ref = torch.cat([eager(p[None], use_cache=False).logits[0] for p in pieces])
        assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
        assert len(spies["flash_attn_varlen_func"]) == 4 and not spies["flash_attn_func"]
        # (c) plain rows -> flash_attn_func
        ids = torch.randint(0, 128, (2, 9))
        got, ref = flash(ids).logits, eager(ids).logits
        assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
        assert len(spies["flash_attn_func"]) == 2


def test_transformers_generate_with_flash_attention_2_equals_eager(installed, spies):
    eager, flash = _pair()
    torch.manual_seed(7)
    ids = torch.randint(3, 128, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        for attention_mask in (None, mask):
            got = flash.generate(ids, attention_mask=attention_mask, **kwargs)
            ref = eager.generate(ids, attention_mask=attention_mask, **kwargs)
            assert got.shape == (2, 14) and torch.equal(got, ref)
    assert spies["flash_attn_func"] and spies["flash_attn_varlen_func"]


def test_bf16_model_in_strict_mode(installed, spies):
    fa_install.install(strict=True)
    assert fa_install.is_strict()
    torch.manual_seed(8)
    ids = torch.randint(0, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0
    valid = mask.bool()
    eager32, _ = _pair()
    eager, flash = _pair(dtype=torch.bfloat16)
    with torch.no_grad():
        ref32 = eager32(ids, attention_mask=mask).logits[valid]
        eager_err = (eager(ids, attention_mask=mask).logits.float()[valid] - ref32).abs().max()
        got = flash(ids, attention_mask=mask).logits.float()[valid]
        assert (got - ref32).abs().max() <= 2 * eager_err + 1e-3
        flash32 = eager32
        flash32.set_attn_implementation("flash_attention_2")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = flash32(ids, attention_mask=mask).logits.float()[valid]
        assert (auto - ref32).abs().max() <= 2 * eager_err + 1e-3
        with pytest.raises(RuntimeError, match="FlashAttention only support fp16 and bf16 data type"):
            flash32(ids, attention_mask=mask)  # fp32 without autocast: what the CUDA kernel rejects
    assert spies["flash_attn_varlen_func"] and set(spies["flash_attn_varlen_func"][:-1]) == {torch.bfloat16}


def test_cpu_autocast_reaches_the_kernel_in_its_dtype_whatever_transformers_reads():
    """transformers 5.5 to 5.9 cast fp32 q/k for FlashAttention only under CUDA's autocast (``get_target_dtype``
    reads ``torch.is_autocast_enabled("cuda")``): installed, the CPU flash-attn makes it read the query's device, as
    5.10 does. Shown on a function written as 5.9's (the matrix runs the real one through
    ``test_bf16_model_in_strict_mode``), and on this transformers' own."""
    import transformers.integrations.flash_attention as fa_integration

    def cuda_only(query, module):  # transformers 5.9.0's logic
        if query.dtype == torch.float32:
            if torch.is_autocast_enabled("cuda"):
                return torch.get_autocast_dtype("cuda")
            return next(m for m in module.modules() if isinstance(m, torch.nn.Linear)).weight.dtype
        return None

    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    q32 = torch.zeros(1, 2, 3, 4)
    assert fa_install._reads_only_cuda_autocast(cuda_only)
    fixed = fa_install._device_autocast_target_dtype(cuda_only)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cuda_only(q32, module) == torch.float32 and fixed(q32, module) == torch.bfloat16
    assert fixed(q32, module) == torch.float32 and fixed(q32.bfloat16(), module) is None
    _skip_if_real_flash_attn()
    stock = fa_integration.get_target_dtype
    fa_install.uninstall()
    fa_install.install()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fa_integration.get_target_dtype(q32, module) == torch.bfloat16
    finally:
        fa_install.uninstall()
    assert fa_integration.get_target_dtype is stock


def test_gpt_oss_is_refused_flash_attention_2(installed, spies):
    """gpt-oss declares ``_compatible_flash_implementations`` (attention sinks), so transformers redirects
    ``flash_attention_2`` to a hub kernel (which cannot load here) and never to this implementation."""
    import transformers.modeling_flash_attention_utils as mfa
    from models import variant_model
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssPreTrainedModel

    assert "flash_attention_2" not in GptOssPreTrainedModel._compatible_flash_implementations
    refused = (ImportError, OSError, ValueError)  # here: ImportError, the `kernels` package is missing
    with pytest.raises(refused):
        variant_model("gpt_oss", num_layers=2, attn_implementation="flash_attention_2")
    model = variant_model("gpt_oss", num_layers=2)
    mfa._loaded_implementation = None  # transformers caches the failed kernel name before loading it
    with pytest.raises(refused):
        model.set_attn_implementation("flash_attention_2")
    assert model.config._attn_implementation == "eager"
    assert not spies["flash_attn_func"] and not spies["flash_attn_varlen_func"]


def test_training_gradients_with_flash_attention_2_equal_eager(installed):
    """A packed row (verl's remove-padding layout) under gradient checkpointing: FA2 parameter gradients equal those
    of eager attention run on each sequence alone."""
    from models import tiny_model

    torch.manual_seed(9)
    lengths = [5, 1, 7]
    ids = torch.randint(0, 128, (1, sum(lengths)))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    grads = {}
    for impl in ("eager", "flash_attention_2"):
        model = tiny_model("llama_gqa", num_layers=2).train()
        model.gradient_checkpointing_enable()
        if impl == "eager":
            logits = torch.cat([model(p[None], use_cache=False).logits[0] for p in ids[0].split(lengths)])
        else:
            model.set_attn_implementation(impl)
            logits = model(ids, position_ids=position_ids, use_cache=False).logits[0]
        logits.square().sum().backward()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grads["flash_attention_2"], grads["eager"], atol=1e-5)
    assert grads["eager"].abs().max() > 1e-3
