"""The ``litgpt-clone`` command line: a nested dict of command functions handed to jsonargparse.

Each function's signature is its command line and its docstring is its ``--help``. Every command takes
``--config file.yaml`` and ``--print_config``. Errors that a user can fix print one line, not a traceback.
"""

from __future__ import annotations

import os
import sys

from litgpt_clone.commands.convert import convert_from_hf, convert_to_hf
from litgpt_clone.commands.download import download
from litgpt_clone.commands.models import models

COMMANDS = {
    "download": download,
    "convert": {"_help": "Convert checkpoints between Hugging Face and native formats.", "from_hf": convert_from_hf, "to_hf": convert_to_hf},
    "models": models,
}


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message already says what to do."""
    from litgpt_clone.checkpoints.download import DownloadError
    from litgpt_clone.checkpoints.io import CheckpointError
    from litgpt_clone.config import ConfigError

    return (ConfigError, CheckpointError, DownloadError, FileNotFoundError)


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import CLI

    try:
        CLI(COMMANDS, args=argv, prog="litgpt-clone")
    except user_errors() as err:
        if os.environ.get("LITGPT_CLONE_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
