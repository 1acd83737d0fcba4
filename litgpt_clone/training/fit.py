"""The one training loop, shared by ``pretrain`` and every ``finetune`` method.

In the nanoGPT shape: learning rate for this step -> micro-steps (no gradient sync until the last) -> clip -> step ->
log -> validate / save. What differs between methods (which parameters train, what a checkpoint holds, where
batches come from) is passed in: the optimizer over the trainable parameters, a ``save`` callback, and data
objects with ``batch(start, size) -> (inputs, targets)`` where ``start`` is a global sample index.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F
from tqdm import tqdm

from litgpt_clone.config import ConfigError
from litgpt_clone.data.batching import length_runs
from litgpt_clone.model import head_only_at
from litgpt_clone.training.args import EvalArgs, TrainArgs
from litgpt_clone.training.loss import fusable_head, linear_cross_entropy, loss_fn


class Batches(Protocol):
    def batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, out of memory); the message says what was kept and what to change."""


@dataclass
class FitState:
    step: int = 0
    """Optimizer steps done."""
    samples: int = 0
    """Global training samples consumed: the data position."""
    tokens: int = 0
    """Global training tokens consumed."""


def lr_at(step: int, args: TrainArgs, max_steps: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(1.0, (step - args.warmup_steps) / max(1, max_steps - args.warmup_steps))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def batch_loss(fabric, model, x: torch.Tensor, y: torch.Tensor, learned_only: bool, per: Optional[int] = None) -> torch.Tensor:
    """The mean token cross-entropy of one host batch, run on the device; the output head and the loss run fused
    (``linear_cross_entropy``) wherever the head allows it. With ``learned_only`` (finetuning: the targets are -100
    at prompt and padding positions) the output head and the cross-entropy run only where targets are not -100,
    and on one process the rows run in ``length_groups`` cut to their own length: the same loss (the sum over
    groups of their token cross-entropy sums, over the batch's learned tokens), without the padding and the logits
    nothing learns from; ``per``: divide the sum by this many tokens instead (those of the whole optimizer step, so
    that every learned token of the step weighs the same). Everything is decided on the host, so the device never
    syncs. (Several forward passes before one backward are not for DDP/FSDP wrappers: there the batch runs whole.)"""
    head = fusable_head(model)
    softcap = getattr(model, "module", model).config.final_logit_softcapping
    if not learned_only:
        counted = int((y != -100).sum())  # (on the host: no sync)
        x, y = fabric.to_device((x, y))
        if head is None:
            loss = loss_fn(model(x), y)
        else:
            with fabric.autocast():  # bf16-mixed: the head's matmuls in bf16, as they would run inside the model
                loss = linear_cross_entropy(model(x, hidden=True).flatten(0, 1), head, y.flatten(), softcap)
        return loss if per is None else loss * (counted / per)
    learned = y != -100  # (B, T)
    total = int(learned.sum())
    lengths = torch.where(learned.any(1), learned.shape[1] - learned.flip(1).int().argmax(1), 0).tolist()  # up to the last learned
    groups = length_groups(lengths) if fabric.world_size == 1 and total else [list(range(len(lengths)))]
    divisor = per if per is not None else total
    reduction = "sum" if divisor else "mean"  # sums over the groups, divided by the learned tokens (an empty sum is 0)
    loss = None
    for group in groups:
        T = max(lengths[i] for i in group) or y.shape[1]
        xg, yg = x[group, :T], y[group, :T].flatten()
        rows = (yg != -100).nonzero().squeeze(1)  # (N,) positions of the flattened (len(group), T) sub-batch
        xg, yg, rows = fabric.to_device((xg, yg[rows], rows))
        if head is None:
            with head_only_at(model, rows):
                logits = model(xg)  # (N, vocab_size)
            part = F.cross_entropy(logits.float(), yg, reduction=reduction)
        else:
            states = model(xg, hidden=True).flatten(0, 1).index_select(0, rows)  # (N, n_embd)
            with fabric.autocast():
                part = linear_cross_entropy(states, head, yg, softcap, reduction=reduction)
        part = part / divisor if divisor else part
        loss = part if loss is None else loss + part
    return loss


def learned_tokens(data: Batches, starts: list[int], size: int) -> int:
    """The tokens with a target (not -100) in the batches of ``size`` samples at ``starts``, at least 1: the
    data's own count where it keeps one (``SFTDataset.learned``), else counted in the batches."""
    if hasattr(data, "learned"):
        total = sum(data.learned(start, size) for start in starts)
    else:
        total = sum(int((data.batch(start, size)[1] != -100).sum()) for start in starts)
    return max(1, total)


def length_groups(lengths: list[int]) -> list[list[int]]:
    """The rows with a nonzero length, longest first, in ``length_runs`` whose padding to the run's longest row
    stays within ``data.batching.MAX_PADDING`` of its tokens."""
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
    return [[order[j] for j in run] for run in length_runs([lengths[i] for i in order], len(order))]


def instability_advice(args: TrainArgs) -> str:
    """What to change when the loss or the weights stop being finite (clipping, where it is off)."""
    return "lower --train.lr" + (", raise --train.warmup_steps or set --train.max_norm" if args.max_norm is None else " or raise --train.warmup_steps")


def max_steps_for(args: TrainArgs, seq_length: int, samples: Optional[int], data=None) -> int:
    """``max_steps``, else ``epochs`` over ``samples``, else the steps whose tokens reach ``max_tokens``: windows of
    ``seq_length``, or, for data that counts its own (``steps_for_tokens``: finetuning samples), their real lengths."""
    if args.max_steps is not None:
        return args.max_steps
    if args.epochs is not None and samples:
        return max(1, math.ceil(args.epochs * samples / args.global_batch_size))
    if args.max_tokens is not None:
        if hasattr(data, "steps_for_tokens"):
            return data.steps_for_tokens(args.max_tokens, args.global_batch_size)
        return math.ceil(args.max_tokens / (args.global_batch_size * seq_length))
    raise ConfigError("set --train.max_steps, --train.epochs or --train.max_tokens: training needs an end")


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux -> GB (peak RSS)


@torch.no_grad()
def validate(fabric, model, data: Batches, args: TrainArgs, eval_args: EvalArgs, learned_only: bool = False) -> float:
    """The mean token loss over ``eval.max_iters`` batches per process, or over the whole validation set once where
    it holds fewer (never wrapping around: repeated samples would weigh more in the mean). Every token weighs the
    same: a short last batch counts for its tokens, so over the same samples (the whole set, or where ``max_iters``
    stops first, the first ``max_iters * micro_batch_size`` per process) the loss does not depend on how they are
    split into micro batches."""
    model.eval()
    mbs, count, world = args.micro_batch_size, getattr(data, "count", None), fabric.world_size
    # every rank runs as many forwards as rank 0, which has the most batches: FSDP's all-gathers and DDP's buffer
    # broadcasts need all ranks in each forward, so a rank past the end of the set runs a stand-in batch it does
    # not count (stopping early left the others waiting for it forever)
    iters = eval_args.max_iters if count is None else min(eval_args.max_iters, math.ceil(count / (world * mbs)))
    totals = torch.zeros(2, device=fabric.device)  # summed token losses, tokens
    for i in range(iters):
        start = (i * world + fabric.global_rank) * mbs
        size = mbs if count is None else min(mbs, count - start)
        x, y = data.batch(start, size) if size > 0 else data.batch(0, 1)
        loss = batch_loss(fabric, model, x, y, learned_only, per=1).float()  # the batch's summed token losses
        tokens = int((y != -100).sum()) if size > 0 else 0
        totals += torch.stack([loss if tokens else torch.zeros_like(loss), torch.tensor(float(tokens), device=totals.device)])
    model.train()
    loss_sum, tokens = fabric.all_reduce(totals, reduce_op="sum").tolist()
    return loss_sum / max(tokens, 1)


def fit(
    fabric,
    model,
    optimizer: torch.optim.Optimizer,
    train: Batches,
    val: Optional[Batches],
    args: TrainArgs,
    eval_args: EvalArgs,
    state: FitState,
    seq_length: int,
    save: Callable[[FitState, bool], None],
    flops_per_token: Optional[float] = None,
    peak_flops: Optional[float] = None,
    learned_only: bool = False,
    kept: Callable[[], str] = lambda: "the last good checkpoint is kept in the output folder",
) -> dict:
    """Train until ``max_steps``; returns a summary. ``save(state, final)`` is called on every rank.
    ``learned_only``: compute logits only where targets are not -100 (see ``batch_loss``). ``kept()``: what a
    stopped run leaves, for its error line (``checkpoint.kept_checkpoint``)."""
    accum = args.gradient_accumulation_steps(fabric.world_size)
    max_steps = max_steps_for(args, seq_length, getattr(train, "count", None), train)
    mbs, world, rank = args.micro_batch_size, fabric.world_size, fabric.global_rank
    history: list[dict] = []
    if state.step < max_steps < args.warmup_steps:  # (the schedule is still right: a run this short is one or a test)
        fabric.print(
            f"note: --train.warmup_steps {args.warmup_steps} covers the whole run of {max_steps} step{'s' * (max_steps != 1)}: the learning rate ends at"
            f" {lr_at(max_steps - 1, args, max_steps):.2e}, never reaching --train.lr {args.lr:.2e}; lower --train.warmup_steps to reach it"
        )
    if val is None:
        fabric.print("note: no validation data (a validation share of 0, or too little data held out for one sequence): no val loss is logged")
    if val is not None and eval_args.initial_validation:
        fabric.print(f"step {state.step}: val loss {validate(fabric, model, val, args, eval_args, learned_only):.4f}")

    model.train()
    start_time, start_tokens = time.perf_counter(), state.tokens
    bar = tqdm(total=max_steps, initial=state.step, desc="train", unit="step", disable=True if rank else None, dynamic_ncols=True)
    window_time, window_tokens = time.perf_counter(), 0
    while state.step < max_steps:
        lr = lr_at(state.step, args, max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        totals = torch.zeros(2, device=fabric.device)  # summed loss, tokens
        # finetuning: each micro batch's summed loss over the learned tokens of the whole step (all micro batches, all
        # processes), as transformers' Trainer and TRL do, so that every token weighs the same whatever the micro batch
        # size or device count; the gradients are averaged over the processes, hence the loss times their number
        per = learned_tokens(train, [state.samples + k * mbs for k in range(accum * world)], mbs) if learned_only else None
        for micro in range(accum):
            start = state.samples + (micro * world + rank) * mbs
            x, y = train.batch(start, mbs)
            with fabric.no_backward_sync(model, enabled=micro < accum - 1):
                loss = batch_loss(fabric, model, x, y, learned_only, per)
                fabric.backward(loss * world if per else loss / accum)
            trained = train.tokens(start, mbs) if hasattr(train, "tokens") else x.numel()  # SFT: the samples' tokens, no padding
            totals += torch.stack([loss.detach().float(), torch.tensor(float(trained), device=totals.device)])
        totals = fabric.all_reduce(totals, reduce_op="sum")
        if args.max_norm is not None:  # no host check of the norm (a sync): a non-finite loss stops training below
            fabric.clip_gradients(model, optimizer, max_norm=args.max_norm, error_if_nonfinite=False)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # the step's one host sync, once the optimizer step is queued: a GPU does not sit idle while the host launches it
        loss_sum, token_count = totals.tolist()
        loss, step_tokens = loss_sum if per else loss_sum / (accum * world), int(token_count)
        if not math.isfinite(loss):
            raise TrainingError(f"loss is {loss} at step {state.step + 1}: {kept()}; {instability_advice(args)}")
        state.step += 1
        state.samples += args.global_batch_size
        state.tokens += step_tokens
        window_tokens += step_tokens
        bar.update(1)

        metrics = {"step": state.step, "loss": loss, "lr": lr, "tokens": state.tokens}
        if state.step % args.log_interval == 0 or state.step == max_steps:
            elapsed = time.perf_counter() - window_time
            metrics["tokens_per_sec"] = window_tokens / elapsed
            if flops_per_token and peak_flops:
                metrics["mfu"] = metrics["tokens_per_sec"] * flops_per_token / (peak_flops * world)
            metrics["memory_gb"] = memory_gb(fabric.device)
            window_time, window_tokens = time.perf_counter(), 0
            line = (
                f"step {state.step}/{max_steps} | loss {loss:.4f} | lr {lr:.2e} | {metrics['tokens_per_sec']:,.0f} tok/s"
                + (f" | MFU {metrics['mfu']:.1%}" if "mfu" in metrics else "")
                + f" | mem {metrics['memory_gb']:.2f} GB"
            )
            bar.write(line) if rank == 0 else None
            bar.set_postfix(loss=f"{loss:.3f}")
        paused = time.perf_counter()  # validating and saving are not training: the next tok/s (and MFU) leave them out
        if val is not None and (state.step % eval_args.interval == 0 or (state.step == max_steps and eval_args.final_validation)):
            metrics["val_loss"] = validate(fabric, model, val, args, eval_args, learned_only)
            metrics["val_ppl"] = math.exp(min(metrics["val_loss"], 50))
            bar.write(f"step {state.step}: val loss {metrics['val_loss']:.4f}, perplexity {metrics['val_ppl']:.2f}") if rank == 0 else None
        fabric.log_dict(metrics, step=state.step)
        history.append(metrics)
        if state.step == max_steps or (args.save_interval and state.step % args.save_interval == 0):
            save(state, state.step == max_steps)
        window_time += time.perf_counter() - paused
    bar.close()
    fabric.barrier()
    wall = time.perf_counter() - start_time
    summary = {
        **asdict(state),
        "wall_seconds": wall,
        "tokens_per_sec": (state.tokens - start_tokens) / wall if wall else 0.0,
        "peak_memory_gb": memory_gb(fabric.device),
        "final_loss": history[-1]["loss"] if history else None,
        "val_loss": next((h["val_loss"] for h in reversed(history) if "val_loss" in h), None),
    }
    resumed = f"; {state.tokens:,} since step 0" if start_tokens else ""  # a resumed run: this session's numbers first
    fabric.print(
        f"trained {state.tokens - start_tokens:,} tokens in {wall:.1f}s ({summary['tokens_per_sec']:,.0f} tok/s over the run,"
        f" validation and saves included{resumed}), "
        f"peak memory {summary['peak_memory_gb']:.2f} GB"
        if state.tokens > start_tokens else f"nothing to train: the run was complete at step {state.step} ({state.tokens:,} tokens)"
    )
    return summary
