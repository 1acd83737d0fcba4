"""The inference worker of ``litgpt-clone serve``: a LitServe ``LitAPI`` that turns jobs into text events.

A job is a plain dict made by the HTTP side (``litgpt_clone.serve.openai``): ``ids`` (prompt token ids),
``max_new_tokens``, ``temperature``, ``top_p``, ``stop`` (strings) and ``seed``. ``predict`` yields, step by
step, one event per job: ``{"text": piece}`` while it runs and, last, ``{"text": rest, "finish_reason":
"stop" | "length", "completion_tokens": n}``. Decoding is the shared ``litgpt_clone.generate.stream`` (the
token loop) and ``TextStream`` (text pieces that never split a character and end at stop strings).

With ``max_batch_size > 1`` LitServe hands ``predict`` a list of jobs: those with the same sampling settings
that fit the context together run as one left-padded batch; the others run one group after another.
"""

from __future__ import annotations

from typing import Iterator, Optional

import litserve as ls
import torch

from litgpt_clone.generate import TextStream, stream


def sampling_key(job: dict, index: int) -> tuple:
    """Jobs with equal keys may share a batch; a seeded job runs alone so that its seed reproduces its text."""
    return (job["temperature"], job["top_p"], job["seed"], index if job["seed"] is not None else None)


def group_jobs(jobs: list[dict], context: int) -> list[list[int]]:
    """Indices of ``jobs`` in groups that share sampling settings and fit the context as one batch
    (longest prompt + largest ``max_new_tokens`` <= context)."""
    groups: list[tuple[tuple, list[int]]] = []
    for i, job in enumerate(jobs):
        key = sampling_key(job, i)
        for group_key, rows in groups:
            longest = max(len(jobs[r]["ids"]) for r in rows + [i])
            most = max(jobs[r]["max_new_tokens"] for r in rows + [i])
            if group_key == key and longest + most <= context:
                rows.append(i)
                break
        else:
            groups.append((key, [i]))
    return [rows for _, rows in groups]


def run_group(llm, jobs: list[dict]) -> Iterator[list[dict]]:
    """Generate ``jobs`` (same sampling settings) as one batch; per step, one event per job (``{}`` once it ended)."""
    texts = [TextStream(llm.tokenizer, job["stop"]) for job in jobs]
    counts = [0] * len(jobs)
    finish: list[Optional[str]] = [None] * len(jobs)
    first = jobs[0]
    steps = stream(
        llm.model, [torch.tensor(job["ids"], dtype=torch.long) for job in jobs], max(job["max_new_tokens"] for job in jobs),
        temperature=first["temperature"], top_p=first["top_p"], stop_ids=llm.tokenizer.stop_ids, seed=first["seed"], compile=llm.compile,
    )
    for step in steps:
        events = []
        for i, (job, text, new) in enumerate(zip(jobs, texts, step)):
            if finish[i]:
                events.append({})
                continue
            piece = ""
            if not new:  # a stop id (not part of the text)
                finish[i] = "stop"
            else:
                counts[i] += len(new)
                piece = text.add(new)
                if text.stopped:
                    finish[i] = "stop"
                elif counts[i] >= job["max_new_tokens"]:
                    finish[i] = "length"
            events.append({"text": piece + text.flush(), "finish_reason": finish[i], "completion_tokens": counts[i]} if finish[i] else {"text": piece})
        yield events
        if all(finish):
            steps.close()
            return
    # the loop ran out of steps: every row still open reached the longest max_new_tokens
    yield [{} if f else {"text": t.flush(), "finish_reason": "length", "completion_tokens": c} for f, t, c in zip(finish, texts, counts)]


def run_jobs(llm, jobs: list[dict]) -> Iterator[list[dict]]:
    """Every job's events, group by group (``group_jobs``); a job outside the running group gets ``{}``."""
    for rows in group_jobs(jobs, llm.model.max_seq_length):
        for events in run_group(llm, [jobs[r] for r in rows]):
            out: list[dict] = [{} for _ in jobs]
            for r, event in zip(rows, events):
                out[r] = event
            yield out


class GenerationAPI(ls.LitAPI):
    """Loads the checkpoint on the device LitServe gives each worker and streams text events for jobs."""

    def __init__(self, checkpoint_dir: str, precision: Optional[str] = None, quantize: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.checkpoint_dir, self.precision, self.quantize = checkpoint_dir, precision, quantize

    def setup(self, device: str) -> None:
        from litgpt_clone.api import LLM

        self.llm = LLM.load(self.checkpoint_dir, device=device, precision=self.precision, quantize=self.quantize)

    def decode_request(self, request):
        return request

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x) -> Iterator:
        if isinstance(x, list):  # a batch (max_batch_size > 1)
            yield from run_jobs(self.llm, x)
        else:
            for events in run_jobs(self.llm, [x]):
                yield events[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        yield from output
