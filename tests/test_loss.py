"""The fused output head + cross-entropy gives the loss and gradients of the unfused ``F.cross_entropy(head(h))``."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from litgpt_clone import GPT, Config
from litgpt_clone.training.loss import chunk_loss_and_grad, fusable_head, linear_cross_entropy, loss_fn


def grads_of(loss_fn_, tensors):
    for t in tensors:
        t.grad = None
    loss = loss_fn_()
    (loss * 0.37).backward()  # a scale, as gradient accumulation gives (loss / accum)
    return loss.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_loss_and_gradients_equal_unfused(softcap, reduction, bias):
    torch.manual_seed(0)
    head = nn.Linear(24, 97, bias=bias).double()
    hidden = torch.randn(70, 24, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 97, (70,))
    targets[::5] = -100  # prompt / padding positions do not count
    params = [hidden, *head.parameters()]

    def unfused():
        z = head(hidden)
        if softcap is not None:
            z = torch.tanh(z / softcap) * softcap
        return F.cross_entropy(z, targets, ignore_index=-100, reduction=reduction)

    expected, expected_grads = grads_of(unfused, params)
    for rows in (16, 70, 1000):  # several chunks, one exact, one larger than the batch
        got, got_grads = grads_of(lambda: linear_cross_entropy(hidden, head, targets, softcap, reduction, rows=rows), params)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
        for a, b in zip(got_grads, expected_grads):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_the_chunk_step_compiles_to_the_eager_results():
    """On a GPU each chunk's loss-and-gradient step runs through torch.compile (the passes over its logits fused);
    compiled (inductor, here for the CPU) it gives the eager function's loss and gradient, in the logits' dtype."""
    torch.manual_seed(0)
    compiled = torch.compile(chunk_loss_and_grad)
    for dtype, softcap, tol in ((torch.bfloat16, 30.0, 2**-7), (torch.float32, None, 1e-5)):
        z = (torch.randn(48, 1000) * 4).to(dtype)
        t, keep, scale = torch.randint(0, 1000, (48, 1)), torch.rand(48) > 0.2, torch.tensor(1 / 40)
        expected, expected_grad = chunk_loss_and_grad(z.clone(), t, keep, scale, softcap, True)
        got, grad = compiled(z.clone(), t, keep, scale, softcap, True)
        assert grad.dtype == dtype and expected.dtype == got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=tol, atol=1e-6)
        reference = F.cross_entropy(z.float()[keep] if softcap is None else (torch.tanh(z.float() / softcap) * softcap)[keep], t[keep, 0], reduction="sum")
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_loss_on_cuda_equals_the_cpu():
    """On CUDA the chunk step is compiled: loss and gradients equal the CPU's eager ones (fp32), and under bf16
    autocast stay within bf16 rounding of them."""
    torch.manual_seed(0)
    head = nn.Linear(64, 5000, bias=False)
    hidden = torch.randn(700, 64, requires_grad=True)
    targets = torch.randint(0, 5000, (700,))
    targets[::7] = -100
    expected, expected_grads = grads_of(lambda: linear_cross_entropy(hidden, head, targets), [hidden, head.weight])
    head_gpu, hidden_gpu = head.cuda(), hidden.detach().cuda().requires_grad_()
    for autocast, tol in ((False, 1e-5), (True, 2e-2)):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            got, got_grads = grads_of(lambda: linear_cross_entropy(hidden_gpu, head_gpu, targets.cuda()), [hidden_gpu, head_gpu.weight])
        torch.testing.assert_close(got.cpu(), expected, rtol=tol, atol=tol)
        for a, b in zip(got_grads, expected_grads):
            torch.testing.assert_close(a.cpu(), b, rtol=tol, atol=tol * b.abs().max().item())


def test_fused_loss_without_grad_and_all_ignored():
    torch.manual_seed(0)
    head = nn.Linear(16, 40)
    hidden = torch.randn(30, 16)
    targets = torch.randint(0, 40, (30,))
    with torch.no_grad():
        got = linear_cross_entropy(hidden, head, targets, rows=7)
    torch.testing.assert_close(got, F.cross_entropy(head(hidden), targets).detach(), atol=1e-6, rtol=1e-6)
    ignored = torch.full((30,), -100)
    assert linear_cross_entropy(hidden, head, ignored, reduction="sum").item() == 0.0


def test_fused_loss_under_bf16_autocast_is_close_to_unfused():
    torch.manual_seed(0)
    head = nn.Linear(64, 300, bias=False)
    hidden = torch.randn(200, 64, requires_grad=True)
    targets = torch.randint(0, 300, (200,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_grads = grads_of(lambda: F.cross_entropy(head(hidden).float(), targets), [hidden, head.weight])
        got, got_grads = grads_of(lambda: linear_cross_entropy(hidden, head, targets, rows=64), [hidden, head.weight])
    assert got.dtype == torch.float32 and head.weight.grad.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # both round logits to bf16; measured 5e-7
    for a, b in zip(got_grads, expected_grads):
        assert (a - b).abs().max() <= 0.02 * b.abs().max()  # bf16 matmuls of the gradient: measured 0.9% and 0.6%


@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_through_hidden_states_equals_logits_loss(tie):
    torch.manual_seed(0)
    model = GPT(Config(n_layer=2, n_embd=32, n_head=4, n_query_groups=2, vocab_size=64, block_size=32, tie_embeddings=tie))
    model.init_weights()
    x, y = torch.randint(0, 64, (3, 32)), torch.randint(0, 64, (3, 32))
    head = fusable_head(model)
    assert head is model.lm_head
    params = list(model.parameters())
    expected, expected_grads = grads_of(lambda: loss_fn(model(x), y), params)
    got, got_grads = grads_of(lambda: linear_cross_entropy(model(x, hidden=True).flatten(0, 1), head, y.flatten(), rows=20), params)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_lora_and_quantized_heads_are_not_fused():
    from litgpt_clone.lora import LoRAArgs, inject_lora

    model = GPT(Config(n_layer=1, n_embd=32, n_head=4, vocab_size=64, block_size=16))
    inject_lora(model, LoRAArgs(r=2, head=True))
    assert fusable_head(model) is None


def test_frozen_head_gets_no_weight_gradient():
    """LoRA finetuning freezes the head: the fused loss skips its weight gradient and still gives the hidden one."""
    torch.manual_seed(0)
    head = nn.Linear(16, 40)
    head.requires_grad_(False)
    hidden = torch.randn(30, 16, requires_grad=True)
    targets = torch.randint(0, 40, (30,))
    linear_cross_entropy(hidden, head, targets, rows=8).backward()
    expected = torch.autograd.grad(F.cross_entropy(head(hidden), targets), hidden)[0]
    torch.testing.assert_close(hidden.grad, expected, atol=1e-6, rtol=1e-5)
    assert head.weight.grad is None and head.bias.grad is None


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
@pytest.mark.parametrize("learned_only", [False, True])
def test_fit_runs_the_fused_head_in_bf16(precision, learned_only):
    """Under bf16-mixed the loss runs outside the model's autocast and under bf16-true Fabric hands the hidden states
    back in fp32: either way the head's matmuls (vocab-sized) must run in bf16, as the model's own layers do, not in
    fp32 (on a GPU that was 2-3x slower pretraining) or on mismatched dtypes (bf16-true finetuning failed)."""
    from lightning_fabric import Fabric
    from torch.utils._python_dispatch import TorchDispatchMode

    from litgpt_clone.training.fit import batch_loss

    vocab = 101  # no other layer has this width
    seen = []

    class VocabMatmuls(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.mm.out):
                mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 2]
                if any(vocab in m.shape for m in mats):
                    seen.append({m.dtype for m in mats})
            return func(*args, **(kwargs or {}))

    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    torch.manual_seed(0)
    with fabric.init_module():
        model = GPT(Config(n_layer=1, n_embd=32, n_head=4, vocab_size=vocab, block_size=16))
    model.init_weights()
    model = fabric.setup(model)
    x, y = torch.randint(0, vocab, (2, 16)), torch.randint(0, vocab, (2, 16))
    y[:, :5] = -100  # a prompt
    with VocabMatmuls():
        loss = batch_loss(fabric, model, x, y, learned_only)
        fabric.backward(loss)
    assert seen and all(dtypes == {torch.bfloat16} for dtypes in seen), seen
    assert len(seen) == 3  # forward logits, hidden gradient, weight gradient: one chunk each
    assert abs(loss.item() - math.log(vocab)) < 0.5  # random init: about log(vocab)
