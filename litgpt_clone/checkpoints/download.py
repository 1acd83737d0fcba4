"""`litgpt-clone download`: fetch a model from the Hugging Face Hub into the standard HF cache, then convert it.

Only what a checkpoint needs is downloaded: ``config.json``, ``generation_config.json``, the tokenizer files and
the weight files ``convert`` reads, picked as transformers picks them (``model.safetensors``, else the safetensors
index and the shards it names, else the same for PyTorch ``.bin``), never ``original/``, ``consolidated*``,
variants (``model.fp16.safetensors``), adapters, ONNX, GGUF, ... The files land in the Hugging Face cache
(``HF_HOME``/``HF_HUB_CACHE``), so other tools share them, and nothing in the cache is ever deleted.
"""

import glob
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

from litgpt_clone.tokenizer import CHAT_TEMPLATE_DIR, TOKENIZER_FILES

CONFIG_FILES = ("config.json", "generation_config.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
LAYOUTS = (
    ("model.safetensors", SAFETENSORS_INDEX, re.compile(r"^model-\d+-of-\d+\.safetensors$")),
    ("pytorch_model.bin", BIN_INDEX, re.compile(r"^pytorch_model-\d+-of-\d+\.bin$")),
)
"""The weight layouts transformers reads, in its order: (single file, index of shards, shard names)."""
HUB_URL = "https://huggingface.co"


class DownloadError(Exception):
    """A download failed for a reason the user can fix; the message is one line, printed without a traceback."""


class RepoNotFound(DownloadError):
    """The hub has no such repo (or it is private and no token was given)."""


# ---------------------------------------------------------------------- file selection
def weight_files(repo_files: Iterable[str], shards: Optional[Iterable[str]] = None) -> list[str]:
    """The weight files ``convert`` reads (``io.hf_weight_files``), as transformers picks them: ``model.safetensors``;
    else its index and the shards it names (``shards``, once the index has been read; until then the
    ``model-*-of-*.safetensors`` files); else the same for ``pytorch_model.bin``; else shards without an index.
    Never variants (``model.fp16.safetensors``), adapters, ``consolidated*`` or trainer state (``training_args.bin``):
    fetching those would only double the download."""
    top = {f for f in repo_files if "/" not in f}
    for single, index, shard in LAYOUTS:
        if single in top:
            return [single]
        if index in top:
            return [index, *sorted(shards if shards is not None else filter(shard.match, top))]
    for _, _, shard in LAYOUTS:
        if any(map(shard.match, top)):
            return sorted(filter(shard.match, top))
    return []


def select_files(repo_files: Iterable[str], shards: Optional[Iterable[str]] = None) -> list[str]:
    """Everything :func:`download` fetches from a repo whose files are ``repo_files`` (empty weights: see caller)."""
    repo_files = list(repo_files)
    wanted = set(CONFIG_FILES) | set(TOKENIZER_FILES)
    named_templates = {f for f in repo_files if f.startswith(CHAT_TEMPLATE_DIR + "/") and f.endswith(".jinja") and f.count("/") == 1}
    return sorted({f for f in repo_files if f in wanted} | named_templates | set(weight_files(repo_files, shards)))


def _generic_patterns() -> list[str]:
    """Patterns used when the repo listing is unknown (offline, nothing listed in the cache)."""
    return [*CONFIG_FILES, *TOKENIZER_FILES, f"{CHAT_TEMPLATE_DIR}/*.jinja", "*.safetensors", SAFETENSORS_INDEX, "*.bin", BIN_INDEX]


# ---------------------------------------------------------------------- errors
def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _gated_message(repo_id: str) -> str:
    return (
        f"{repo_id} is gated: accept its license on {HUB_URL}/{repo_id}, then set HF_TOKEN=hf_... (or run"
        f" `litgpt-clone download {repo_id} --access_token hf_...` once)"
    )


def _closest_names(repo_id: str) -> str:
    """' Closest: a, b.' from our model registry, or '' (the registry may know nothing close)."""
    try:
        from litgpt_clone.config import ConfigError, find_config, name_to_config
    except Exception:
        return ""
    try:
        entry = find_config(repo_id)
    except ConfigError as e:
        match = re.search(r"Closest: (.*?)\.(?:\s|$)", str(e))
        if not match:
            return ""
        names = [n.strip() for n in match.group(1).split(",") if n.strip()]
        try:  # download takes repo ids: show the hub repo of each close registry name when it has one
            registry = name_to_config()
            names = [_hf_repo(registry.get(n)) or n for n in names]
        except Exception:
            pass
        return f" Closest: {', '.join(names)}."
    except Exception:
        return ""
    repo = _hf_repo(entry)
    return f" Did you mean {repo}?" if repo and repo != repo_id else ""


def _hf_repo(entry: Optional[dict]) -> Optional[str]:
    hf = (entry or {}).get("hf_config") or {}
    return f"{hf['org']}/{hf['name']}" if hf.get("org") and hf.get("name") else None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _is_offline() -> bool:
    from huggingface_hub import constants

    is_offline = getattr(constants, "is_offline_mode", None)
    return bool(is_offline() if callable(is_offline) else constants.HF_HUB_OFFLINE)


def _is_connection_error(error: BaseException) -> bool:
    """The hub could not be reached (DNS, refused connection, timeout), whatever HTTP client huggingface_hub uses."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    root = type(error).__module__.split(".")[0]
    return root.startswith(("httpx", "httpcore", "requests", "urllib3")) and bool(
        names & {"ConnectError", "ConnectionError", "TimeoutException", "Timeout", "NetworkError", "TransportError"}
    )


def _hub_error(repo_id: str, revision: Optional[str], error: BaseException) -> DownloadError:
    """Turn a huggingface_hub error into one line the user can act on."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return DownloadError(_gated_message(repo_id))
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(f"{repo_id} has no revision {revision!r} on the hub (use a branch, tag or commit hash)")
    if isinstance(error, RepositoryNotFoundError):
        return RepoNotFound(
            f"{repo_id} was not found on the hub (check the spelling; private repos need --access_token)"
            + _closest_names(repo_id)
        )
    if isinstance(error, RemoteEntryNotFoundError):
        return DownloadError(f"{repo_id} changed on the hub while downloading ({_one_line(error)[:200]}): retry")
    if isinstance(error, HfHubHTTPError):
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        server_message = getattr(error, "server_message", None) or ""
        if status == 401 and "invalid credentials" in server_message.lower():
            return DownloadError(
                f"the hub rejected the access token for {repo_id}: pass a valid --access_token hf_... (or fix HF_TOKEN)"
            )
        if status in (401, 403):
            return DownloadError(_gated_message(repo_id))
        detail = _one_line(server_message or str(error).split("\n")[0])[:200]
        return DownloadError(f"downloading {repo_id} failed: HTTP {status} from the hub ({detail})")
    return DownloadError(f"downloading {repo_id} failed: {type(error).__name__}: {_one_line(error)[:300]}")


def _check_weights(repo_id: str, snapshot: Path, offline_reason: Optional[str]) -> None:
    present = [p.name for p in snapshot.iterdir() if p.is_file()] if snapshot.is_dir() else []
    if weight_files(present):
        return
    if offline_reason:
        raise DownloadError(
            f"{offline_reason} and the cached snapshot of {repo_id} at {snapshot} has no weights: "
            "download it once online"
        )
    raise DownloadError(f"{repo_id} has no model weights (model.safetensors, pytorch_model.bin or their shards) in {snapshot}")


# ---------------------------------------------------------------------- download
def _cached_snapshot(
    repo_id: str, revision: Optional[str], token: Optional[str], reason: str, online_hint: str,
    local_dir: Optional[Path] = None, force_download: bool = False,
) -> Path:
    """The snapshot already in the cache (or in ``local_dir``), without any network call (offline mode, or the hub
    is unreachable)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if force_download:
        raise DownloadError(f"{reason}, and --force_download needs the hub")
    allow_patterns = _generic_patterns()
    try:  # huggingface_hub >= 1.x caches the repo listing: select the same files as online
        from huggingface_hub import get_cached_repo_tree

        listed = [f.path for f in get_cached_repo_tree(repo_id, revision=revision, local_dir=local_dir)]
        if weight_files(listed):
            allow_patterns = [glob.escape(f) for f in select_files(listed)]
    except Exception:
        pass
    try:
        path = Path(
            snapshot_download(
                repo_id, revision=revision, token=token, allow_patterns=allow_patterns, local_files_only=True,
                local_dir=local_dir,
            )
        )
    except LocalEntryNotFoundError as e:
        if type(e).__name__ == "IncompleteSnapshotError":
            where = getattr(e, "snapshot_path", None) or _cache_dir()
            hint = online_hint.replace(" once ", " again ")
            raise DownloadError(f"{reason} and the cached snapshot of {repo_id} at {where} is missing files: {hint}") from None
        what = repo_id if revision is None else f"{repo_id} (revision {revision!r})"
        where = f"--out_dir {local_dir}" if local_dir is not None else f"the cache at {_cache_dir()}"
        raise DownloadError(f"{reason} and {what} is not in {where}: {online_hint}") from None
    except Exception as e:
        raise _hub_error(repo_id, revision, e) from None
    _check_weights(repo_id, path, reason)
    return path


def _index_shards(repo_id: str, index: Path) -> list[str]:
    """The shards ``index`` names (``io.index_shards``: plain file names, never a path elsewhere on this disk)."""
    from litgpt_clone.checkpoints.io import CheckpointError, index_shards

    try:
        return index_shards(index, f"{repo_id}'s {Path(index).name}", fix="the repo is broken: use another revision or repo")
    except CheckpointError as err:
        raise DownloadError(str(err)) from None


def _refetch_wrong_sizes(path: Path, files: list[str], commit: Optional[str], fetch: dict) -> None:
    """Fetch again the files whose size differs from the hub's listing (a copy cut short, a disk that filled up):
    huggingface_hub returns any file already in the cache unchecked, so re-running would reuse the broken one. The
    listing is the one ``snapshot_download`` has just cached, so this costs a ``stat`` per file."""
    from huggingface_hub import get_cached_repo_tree, hf_hub_download

    try:
        sizes = {f.path: f.size for f in get_cached_repo_tree(fetch["repo_id"], revision=commit, local_dir=fetch["local_dir"])}
    except Exception:  # (no listing cached: nothing to compare with)
        return
    for name in files:
        size = (path / name).stat().st_size
        if sizes.get(name) is not None and size != sizes[name]:
            print(f"{name} in the cache has {size} bytes where the hub lists {sizes[name]}: fetching it again", file=sys.stderr)
            hf_hub_download(filename=name, force_download=True, **fetch)


def _download_snapshot(
    repo_id: str, access_token: Optional[str], revision: Optional[str], local_dir: Optional[Path] = None,
    force_download: bool = False,
) -> Path:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled

    offline_hint = "download it once online, or unset HF_HUB_OFFLINE"
    cached = dict(local_dir=local_dir, force_download=force_download)
    if _is_offline():
        return _cached_snapshot(repo_id, revision, access_token, "HF_HUB_OFFLINE=1", offline_hint, **cached)

    def unreachable(error: BaseException) -> Path:
        from huggingface_hub import constants

        reason = f"the hub at {constants.ENDPOINT} cannot be reached ({type(error).__name__})"
        return _cached_snapshot(repo_id, revision, access_token, reason, "check your network and retry", **cached)

    try:
        # model_info lists the files in one call and, unlike list_repo_files, fails fast (no retries) when the hub
        # cannot be reached, so the cached snapshot is used right away
        info = HfApi().model_info(repo_id, revision=revision, token=access_token)
        repo_files = (
            [s.rfilename for s in info.siblings]
            if info.siblings is not None
            else HfApi().list_repo_files(repo_id, revision=revision, token=access_token)
        )
    except HFValidationError as e:
        raise DownloadError(f"{repo_id!r} is not a valid repo id ({_one_line(e)[:200]}): use <org>/<name>") from None
    except Exception as e:
        if isinstance(e, OfflineModeIsEnabled):
            return _cached_snapshot(repo_id, revision, access_token, "HF_HUB_OFFLINE=1", offline_hint, **cached)
        if _is_connection_error(e):
            return unreachable(e)
        raise _hub_error(repo_id, revision, e) from None

    wanted = select_files(repo_files)
    if "config.json" not in repo_files:  # (checked before fetching gigabytes of weights that could not be used)
        raise DownloadError(f"{repo_id} has no config.json at the top level: it is not a transformers checkpoint, which is what litgpt-clone converts")
    if not weight_files(wanted):
        others = sorted(f for f in repo_files if f.endswith((".safetensors", ".bin", ".pth", ".pt", ".gguf", ".onnx")))
        found = f" (only {', '.join(others[:4])}{', ...' if len(others) > 4 else ''})" if others else ""
        raise DownloadError(
            f"{repo_id} has no Hugging Face model weights (model.safetensors, pytorch_model.bin or their shards at the"
            f" top level){found}: nothing to download"
        )

    fetch = dict(repo_id=repo_id, revision=revision, token=access_token, local_dir=local_dir)
    try:
        index = next((f for f in wanted if f.endswith(".index.json")), None)
        if index:  # the shards are the files the index names, as transformers reads them (whatever their names)
            wanted = select_files(repo_files, _index_shards(repo_id, hf_hub_download(filename=index, force_download=force_download, **fetch)))
        path = Path(snapshot_download(allow_patterns=[glob.escape(f) for f in wanted], force_download=force_download, **fetch))
        _refetch_wrong_sizes(path, wanted, info.sha, fetch)
    except DownloadError:
        raise
    except Exception as e:
        if _is_connection_error(e):
            return unreachable(e)
        raise _hub_error(repo_id, revision, e) from None
    _check_weights(repo_id, path, None)
    return path


def _repo_id(name: str) -> str:
    """``name`` when it is a repo id; the hub repo of a registry name (``pythia-14m``), as generate and chat read one;
    else one line saying what a repo id is."""
    from litgpt_clone.checkpoints.io import REPO_ID

    if REPO_ID.match(name):
        return name
    repo, closest = None, ""
    if "/" not in name:  # (a path such as checkpoints/x is not looked up: the registry matches its last part)
        from litgpt_clone.config import ConfigError, find_config

        try:
            repo = _hf_repo(find_config(name))
        except ConfigError:
            closest = _closest_names(name)
    if repo is None:
        message = f"{name!r} is not a hub repo id: use <org>/<name>, e.g. meta-llama/Llama-3.2-1B"
        raise DownloadError(message + (f".{closest}" if closest else ""))
    return repo


def download(
    repo_id: str,
    access_token: Optional[str] = None,
    out_dir: Optional[Path] = None,
    convert: bool = True,
    revision: Optional[str] = None,
    force_download: bool = False,
    dtype: Optional[str] = None,
) -> Path:
    """Download a model from the Hugging Face Hub and convert it into a litgpt_clone checkpoint.

    Only config.json, generation_config.json, the tokenizer files and the weight files that convert reads are
    fetched (model.safetensors, else its index and the shards it names, else the same for pytorch_model.bin; never
    original/, consolidated*, variants such as model.fp16.safetensors, adapters, ONNX or GGUF files).
    Files go to the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE), shared with transformers;
    HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE are honoured. With HF_HUB_OFFLINE=1 the cached snapshot is used.
    A cached file whose size differs from the hub's listing is fetched again.

    Args:
        repo_id: The Hugging Face repo to download, as <org>/<name> (e.g. meta-llama/Llama-3.2-1B), or a registry
            name (`litgpt-clone models`), which stands for its repo.
        access_token: A Hugging Face token (hf_...) for gated or private repos. Defaults to HF_TOKEN or the token
            saved by `hf auth login`.
        out_dir: Where the converted checkpoint goes. Defaults to checkpoints/<repo_id> (checkpoints/<repo_id>@<revision>
            with --revision). With --convert false, the
            folder the repo's files are downloaded into instead of the cache (as `hf download --local-dir`).
        convert: Convert the download into a litgpt_clone checkpoint in out_dir (lit_model.safetensors and
            model_config.yaml). With false, only download and return the folder of the files.
        revision: A branch, tag or commit hash of the repo. Defaults to the repo's main branch.
        force_download: Fetch every file again even if it is cached (a cached file that is corrupt although its
            size is right).
        dtype: Cast the converted weights to float32, bfloat16 or float16 (as ``convert from_hf --dtype``); default:
            as stored (mixed stored dtypes take config.json's, as transformers loads them).

    Returns:
        The converted checkpoint folder (out_dir), or with convert=False the snapshot folder in the HF cache (out_dir
        when given).

    Raises:
        DownloadError: one line saying what went wrong (gated, not found, offline with a cold cache, no weights).
    """
    from litgpt_clone.config import check_out_dir

    repo_id = _repo_id(repo_id)
    if revision is not None and (not revision.strip() or revision.startswith("/") or ".." in revision):
        # (git names no branch or tag so; such a revision put checkpoints/<repo_id>@<revision> outside checkpoints/)
        raise DownloadError(f"--revision {revision!r} is not a valid revision: use a branch, tag or commit hash")
    from litgpt_clone.checkpoints.convert import DTYPES

    if dtype is not None and (dtype not in DTYPES or not convert):  # (said before the download, not after it)
        raise DownloadError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}" if convert else "--dtype casts the converted weights: leave it out with --convert false")
    if not convert:
        if out_dir is None:
            return _download_snapshot(repo_id, access_token, revision, force_download=force_download)
        check_out_dir(out_dir)  # said before the download, not after it
        _download_snapshot(repo_id, access_token, revision, local_dir=out_dir, force_download=force_download)
        return Path(out_dir)
    # (another revision gets a folder of its own: it replaced the main branch's conversion, which every later use of
    # the repo id then read)
    out_dir = Path(out_dir) if out_dir is not None else Path("checkpoints") / (repo_id + (f"@{revision}" if revision else ""))
    check_out_dir(out_dir)
    from litgpt_clone.checkpoints.convert import convert_hf_checkpoint, hf_weights_in

    if stale := hf_weights_in(out_dir):  # (convert refuses it too: said before the download, not after it)
        raise DownloadError(
            f"{out_dir}, where {repo_id}'s converted checkpoint goes, holds Hugging Face weights ({', '.join(stale[:3])}),"
            " which transformers would load from it instead: move them elsewhere (or give download another --out_dir)"
        )
    snapshot = _download_snapshot(repo_id, access_token, revision, force_download=force_download)

    convert_hf_checkpoint(hf_dir=snapshot, out_dir=out_dir, dtype=dtype, name=repo_id.split("/")[-1], repo_id=repo_id)
    return out_dir
