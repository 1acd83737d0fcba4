"""``litgpt-clone download <repo_id>``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def download(
    repo_id: str, access_token: Optional[str] = None, out_dir: Optional[Path] = None, convert: bool = True,
    revision: Optional[str] = None, force_download: bool = False, dtype: Optional[str] = None,
) -> None:
    """Download a checkpoint from the Hugging Face hub (only the files needed) and convert it to a native one.

    Honours HF_HOME, HF_TOKEN, HF_HUB_OFFLINE and HF_ENDPOINT; files land in the standard hub cache. A cached file
    whose size differs from the hub's listing (a download cut short) is fetched again.

    Args:
        repo_id: Hub repository, e.g. ``meta-llama/Llama-3.2-1B``, or a registry name (``litgpt-clone models``),
            e.g. ``pythia-14m`` for ``EleutherAI/pythia-14m``.
        access_token: Token for gated or private repos (default: HF_TOKEN or the token saved by ``hf auth login``).
        out_dir: Where the native checkpoint goes; default ``checkpoints/<repo_id>`` (``checkpoints/<repo_id>@<revision>``
            with ``--revision``, so that another revision never replaces the one a repo id stands for). With ``--convert false``,
            the folder the hub files are downloaded into instead of the cache (like ``hf download --local-dir``).
        convert: Convert to a native checkpoint after downloading; ``--convert false`` keeps only the hub files.
        revision: Branch, tag or commit to download.
        force_download: Fetch every file again even when it is cached (``hf download --force-download``): the fix for
            a cached file that is corrupt.
        dtype: Convert the weights to float32, bfloat16 or float16 (LitGPT's ``download --dtype``); default: as stored.
    """
    from litgpt_clone.checkpoints.download import download as run

    path = run(repo_id, access_token=access_token, out_dir=out_dir, convert=convert, revision=revision, force_download=force_download, dtype=dtype)
    print(path)
