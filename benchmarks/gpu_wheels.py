"""Fetch the wheels the GPU scripts need that the lent GPU machine's image lacks, for the device tool's `carry`.

The device machine cannot reach any network; its Python 3.12 image already holds torch, lightning, transformers,
tokenizers, safetensors, huggingface_hub, accelerate, peft, tiktoken and ~200 more (listed in
``/work/.library/device/KINDS.md``, copied into ``DEVICE_IMAGE`` below). This script resolves the requirements of
the packages named on the command line against that list (wheel metadata, markers for Linux x86_64 + Python 3.12)
and downloads only the missing wheels into ``gpu_wheels/`` (git-ignored), printing their total size: the device
tool carries at most 64 MiB with the working tree.

    .venv/bin/python benchmarks/gpu_wheels.py                         # serve + evaluate + CLI needs
    .venv/bin/python benchmarks/gpu_wheels.py bitsandbytes==0.50.2   # QLoRA in gpu_finetune.py (43 MB alone)

On the device: ``bash benchmarks/gpu_run.sh gpu_serve.py`` (installs the carried wheels, then runs the script).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["jsonargparse[signatures]==4.53.0", "litserve==0.2.19", "lm-eval==0.4.13", "lightning-fabric==2.6.6"]
DEVICE_IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split()
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def download(spec: str, out: Path) -> Path:
    """One wheel for Linux x86_64 / CPython 3.12, without its dependencies."""
    before = set(out.glob("*.whl"))
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                              "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
                              *[a for p in ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "any")
                                for a in ("--platform", p)], "-d", str(out), spec], capture_output=True, text=True)
    if fetched.returncode:  # no wheel on PyPI (sdist only, e.g. sqlitedict): build one here (pure Python ones work there)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), spec], check=True)
    new = set(out.glob("*.whl")) - before
    name = canonical(Requirement(spec).name)
    found = new or {w for w in out.glob("*.whl") if canonical(w.name.split("-")[0]) == name}  # fetched before
    if not found:
        raise SystemExit(f"error: no wheel for {spec} (Linux x86_64, CPython 3.12)")
    return next(iter(found))


def requirements(wheel: Path, extras: set[str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    wanted = []
    for req in reqs:
        if req.marker is None or any(req.marker.evaluate({**ENV, "extra": e}) for e in (extras or {""})):
            wanted.append(req)
    return wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="*", default=DEFAULT, help="requirements to make installable on the device")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_wheels")
    parser.add_argument("--budget_mib", type=float, default=48, help="fail above this many MiB (the tree travels too)")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    present = {canonical(p) for p in DEVICE_IMAGE}
    queue, seen = [Requirement(s) for s in args.specs], set()
    while queue:
        req = queue.pop(0)
        name = canonical(req.name)
        if name in present or name in seen:
            continue
        seen.add(name)
        wheel = download(f"{req.name}{req.specifier}", args.out)
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
        queue.extend(requirements(wheel, set(req.extras)))
    total = sum(w.stat().st_size for w in args.out.glob("*.whl")) / 2**20
    print(f"{len(list(args.out.glob('*.whl')))} wheels, {total:.1f} MiB in {args.out}")
    if total > args.budget_mib:
        raise SystemExit(f"error: {total:.1f} MiB is over --budget_mib {args.budget_mib}: fetch fewer packages per device call")


if __name__ == "__main__":
    main()
