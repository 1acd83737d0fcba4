"""What a training step keeps in memory: the gated MLP keeps two of its three (tokens x intermediate) tensors for the
backward pass, RMSNorm keeps its input in its own dtype (not an fp32 copy and the normalized x), and the fused loss
holds one chunk of logits at a time. Counted with ``LiveTensorBytes`` (live tensor
storage, the CPU stand-in for ``torch.cuda.memory_allocated``)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from litgpt_clone import Config
from litgpt_clone.model import ACTIVATIONS, GatedMLP, RMSNorm
from litgpt_clone.training.loss import linear_cross_entropy
from litgpt_clone.training.tensor_memory import LiveTensorBytes


def run_and_count_kept(forward, grad_out, inputs, weights):
    """Run ``forward`` (gradients of ``inputs`` reset first) and its backward pass; the output, the inputs' gradients
    and what autograd kept for the backward pass: storage id -> bytes, ``weights``' storages left out."""
    skip = {w.untyped_storage()._cdata for w in weights}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage()._cdata not in skip:
            kept[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    for t in inputs:
        t.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    out.backward(grad_out)
    return out, [t.grad for t in inputs], kept


def test_live_tensor_bytes_counts_storages_once_until_freed():
    a = torch.zeros(1000)  # made before: counted only when added
    with LiveTensorBytes([a]) as memory:
        assert memory.now == 4000
        b = torch.ones(250, 4, dtype=torch.float64)  # 8,000 bytes
        view = b[:10]  # shares b's storage
        assert memory.now == 12_000
        del b, view
        assert memory.now == 4000
        c = torch.empty(10, dtype=torch.bfloat16)
    assert (memory.now, memory.peak) == (4020, 12_000)
    del c


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_mlp_gradients_equal_autograd_and_it_keeps_one_tensor_less(activation, dtype):
    torch.manual_seed(0)
    config = Config(n_embd=32, intermediate_size=96, bias=True, mlp_activation=activation, mlp_class_name="GatedMLP")
    mlp = GatedMLP(config).to(dtype)
    x = torch.randn(2, 7, 32, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(2, 7, 32, dtype=dtype)

    def run(forward):
        out, grads, kept = run_and_count_kept(forward, grad_out, [x, *mlp.parameters()], mlp.parameters())
        return out, grads, sum(kept.values())

    act = ACTIVATIONS[activation]
    expected, expected_grads, autograd_kept = run(lambda: mlp.proj(act(mlp.fc_1(x)) * mlp.fc_2(x)))
    out, grads, kept = run(lambda: mlp(x))
    assert torch.equal(out, expected)
    for g, e in zip(grads, expected_grads):  # the same kernels: bit for bit
        assert torch.equal(g, e)
    size = dtype.itemsize
    assert kept == (14 * 32 + 3 * 14 * 96) * size  # x, fc_1(x), fc_2(x) and the product (proj's input)
    assert autograd_kept - kept == 14 * 96 * size  # autograd also kept act(fc_1(x))


@pytest.mark.parametrize("unit_offset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frozen", [False, True])
def test_rms_norm_gradients_equal_autograd_and_it_keeps_only_its_input(unit_offset, dtype, frozen):
    torch.manual_seed(0)
    norm = RMSNorm(64, eps=1e-5, unit_offset=unit_offset).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    norm.weight.requires_grad_(not frozen)
    x = torch.randn(3, 5, 64, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(3, 5, 64, dtype=dtype)

    def autograd_norm():  # the ops of the forward pass, differentiated by autograd
        xf = x.float()
        xhat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)
        if unit_offset:
            return (xhat * (1.0 + norm.weight.float())).to(dtype)
        return norm.weight * xhat.to(dtype)

    def run(forward):
        out, (grad_x, grad_w), kept = run_and_count_kept(forward, grad_out, [x, norm.weight], [norm.weight])
        return out, grad_x, grad_w, sum(kept.values())

    expected, expected_x, expected_w, autograd_kept = run(autograd_norm)
    out, grad_x, grad_w, kept = run(lambda: norm(x))
    assert torch.equal(out, expected)
    # fp32: rounding; bf16: at most 1 ulp of the largest gradients (the formula's subtraction cancels near 0)
    torch.testing.assert_close(grad_x, expected_x, **({"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0.016, "atol": 0.02}))
    if frozen:
        assert grad_w is None and expected_w is None
    else:
        torch.testing.assert_close(grad_w, expected_w, **({"rtol": 1e-6, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.016, "atol": 0.02}))
    assert kept == 15 * 64 * dtype.itemsize + 15 * 4  # x and one fp32 inverse norm per row
    # autograd kept x too (as the fp32 copy of a bf16 x), and x / rms(x) for a weight that learns
    extra = (15 * 64 * 2 if dtype == torch.bfloat16 else 0) + (0 if frozen else 15 * 64 * (4 if unit_offset else dtype.itemsize))
    assert autograd_kept - kept == extra + (64 * 4 if unit_offset else 0)  # and Gemma's (1 + w)


def test_mlp_without_gradients_runs_plain():
    config = Config(n_embd=16, n_head=2, intermediate_size=48, mlp_class_name="GatedMLP", mlp_activation="silu")
    mlp = GatedMLP(config)
    x = torch.randn(3, 16)
    with torch.no_grad():
        out = mlp(x)
    assert out.grad_fn is None
    torch.testing.assert_close(out, mlp.proj(F.silu(mlp.fc_1(x)) * mlp.fc_2(x)), rtol=0, atol=0)


def test_fused_loss_holds_one_chunk_of_logits_at_a_time():
    torch.manual_seed(0)
    n, width, vocab, rows = 70, 24, 1000, 16
    head = nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(n, width, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    chunk = rows * vocab * 4  # one chunk's fp32 logits (the fp32 path works on them in place)
    results = (n * width + vocab * width) * 4  # the gradients of the hidden states and the head, made up front
    with LiveTensorBytes([hidden, targets, head.weight]) as memory:  # made before: their views are not new memory
        before = memory.now
        loss = linear_cross_entropy(hidden, head, targets, rows=rows)
    assert loss.item() == pytest.approx(F.cross_entropy(head(hidden), targets).item(), rel=1e-6)
    # before: the last chunk's logits stayed alive while the next chunk's were made, 2 chunks at once
    assert results + chunk <= memory.peak - before < results + 1.25 * chunk



def test_gpu_chunks_are_small_for_a_frozen_head_and_large_for_one_that_trains():
    """A frozen head (LoRA) keeps the peak low with ~16M logits a chunk; a head that trains adds a (vocab x n_embd)
    weight-gradient sum per chunk, so it takes ~64M (pythia-160m: 1,334 rows, as in the H200 pretraining run)."""
    from litgpt_clone.training.loss import chunk_rows

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert chunk_rows(50304, cuda) == 333 and chunk_rows(50304, cuda, weight_grad=True) == 1334
    assert chunk_rows(128256, cuda) == 130 and chunk_rows(128256, cuda, weight_grad=True) == 523
    assert chunk_rows(256000, cuda) == 128  # never below one matmul tile
    assert chunk_rows(32000, cpu) == chunk_rows(32000, cpu, weight_grad=True) == 256

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inference_norm_is_one_fused_kernel_within_one_bf16_ulp():
    """Without gradients on CUDA, RMSNorm runs aten._fused_rms_norm (a kernel, not 8, for launch-bound steps): fp32
    equal to ``rms_norm`` to rounding, bf16 within one ulp (it multiplies by the weight before the cast)."""
    from litgpt_clone.model import rms_norm

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 2**-7)):
        norm = RMSNorm(2048, eps=1e-5).to("cuda", dtype)
        nn.init.normal_(norm.weight)
        x = torch.randn(4, 16, 2048, device="cuda", dtype=dtype)
        with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            out = norm(x)
            torch.cuda.synchronize()
        assert len([e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]) <= 2  # unfused: 8
        expected = rms_norm(x, norm.weight, 1e-5, False)[0]
        torch.testing.assert_close(out.float(), expected.float(), rtol=tol, atol=tol * expected.float().abs().max().item())

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_live_tensor_bytes_tracks_the_cuda_allocator():
    """The CPU stand-in counts what CUDA's allocator reports, less its rounding and library workspaces: a training
    step of a small Llama (fwd + bwd, bf16), resident and peak."""
    from litgpt_clone import GPT

    torch.manual_seed(0)
    config = Config(n_layer=4, n_embd=1024, n_head=8, n_query_groups=4, intermediate_size=2816, vocab_size=32000,
                    block_size=512, mlp_class_name="GatedMLP", mlp_activation="silu", norm_class_name="RMSNorm", bias=False)
    model = GPT(config).to(device="cuda", dtype=torch.bfloat16)
    x = torch.randint(0, 32000, (4, 512), device="cuda")
    model(x).float().logsumexp(-1).mean().backward()  # cuBLAS / kernel warm-up: workspaces exist before counting
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()
    with LiveTensorBytes([*model.parameters(), x]) as memory:
        before = memory.now
        model(x).float().logsumexp(-1).mean().backward()
    torch.cuda.synchronize()
    cuda_peak = torch.cuda.max_memory_allocated() - resident
    live_peak = memory.peak - before
    print(f"step peak above resident: live {live_peak / 2**20:.1f} MiB, CUDA {cuda_peak / 2**20:.1f} MiB")
    assert 0.85 * cuda_peak <= live_peak <= 1.01 * cuda_peak


@pytest.mark.parametrize("rope", [True, False])
def test_attention_does_not_keep_the_whole_qkv_output_for_backward(rope):
    """q and k are new tensors after RoPE; v was a view of the fused qkv output, so keeping it for the backward pass
    kept all of q, k and v (Llama-3.2-1B: 6x what v needs). Without RoPE (or q/k norms) q and k are views too and
    the whole output is needed anyway: v is left a view."""
    from litgpt_clone import GPT

    config = Config(n_layer=1, n_embd=64, n_head=8, n_query_groups=2, intermediate_size=128, vocab_size=50, block_size=16,
                    mlp_class_name="GatedMLP", mlp_activation="silu", norm_class_name="RMSNorm", rotary_percentage=1.0 if rope else 0.0)
    model = GPT(config)
    x = torch.randint(0, 50, (2, 16))
    qkv_bytes = 2 * 16 * config.qkv_size * 4
    _, _, saved = run_and_count_kept(lambda: model(x).sum(), None, [], [])
    kept = list(saved.values())
    v_bytes = 2 * 16 * 16 * 4  # (2, 2 groups, 16, 8) fp32
    assert (qkv_bytes not in kept and v_bytes in kept) if rope else (qkv_bytes in kept and v_bytes not in kept)
