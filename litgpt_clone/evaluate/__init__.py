"""Evaluation: ``LitGPTLM`` (``litgpt_clone.evaluate.lm``), a checkpoint as an lm-eval model registered as
``litgpt_clone``, and the ``EvaluationError`` of the ``evaluate`` commands. lm-eval is imported only when
``LitGPTLM`` is used."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Evaluation arguments that cannot work; the message names the problem and the fix."""


def __getattr__(name: str):
    if name == "LitGPTLM":
        from litgpt_clone.evaluate.lm import LitGPTLM

        return LitGPTLM
    raise AttributeError(name)
