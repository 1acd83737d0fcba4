"""``python -m litgpt_clone.evaluate <lm_eval arguments>``: lm-eval's own command line with our model registered,
so ``--model litgpt_clone --model_args checkpoint_dir=<folder>`` works (the ``lm_eval`` script finds models only
in the modules it imports itself)."""

from lm_eval.__main__ import cli_evaluate

import litgpt_clone.evaluate.lm  # noqa: F401  (registers "litgpt_clone" with lm-eval)

if __name__ == "__main__":
    cli_evaluate()
