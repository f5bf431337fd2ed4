"""Install the OpenMMLab stack that MMDetection models and ``yolov5`` train with, on a machine with no
prebuilt mmcv wheel (no CPU wheel of mmcv exists for recent torch releases).

    python -m cluster.install_openmmlab [--no-yolov5]        (``make openmmlab``; ``make test`` runs it)

What it does, and why by hand (pip alone cannot: the sdist needs two fixes to build against torch 2.14):

1. ``setuptools < 81`` in this environment: mmcv's ``setup.py`` imports ``pkg_resources``, which newer
   setuptools no longer ship, and the build runs without isolation because it compiles against the
   installed torch.
2. mmcv's sdist (``MMCV_VERSION``) is downloaded, its ``setup.py`` told ``-std=c++20`` instead of c++14/17
   (torch 2.14's headers need C++20), and built with its CPU ops (``MMCV_WITH_OPS=1 FORCE_CUDA=0``, where
   CUDA is absent; with ``nvcc`` present the CUDA ops are built too). 10-17 minutes on 2 cores.
3. The wheel is kept in a cache keyed by the torch and Python versions (``$VISIONSWEEP_WHEEL_CACHE``, default
   ``~/.cache/visionsweep/wheels``), so a machine pays for the build once; later runs install it in seconds.
4. mmengine, mmdet (Apache-2.0) and, unless ``--no-yolov5``, mmyolo (GPL-3.0: YOLOv5; it needs mmcv < 2.1,
   hence mmcv 2.0.1) are installed from PyPI at the versions below.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MMCV_VERSION = "2.0.1"
PACKAGES = ["mmengine==0.10.7", "mmdet==3.3.0"]
YOLO_PACKAGES = ["mmyolo==0.6.0"]


def cache_dir() -> Path:
    import torch

    root = os.environ.get("VISIONSWEEP_WHEEL_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visionsweep" / "wheels"
    tag = f"torch-{torch.__version__.split('+')[0]}-py{sys.version_info.major}{sys.version_info.minor}"
    return Path(root) / tag


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def build_mmcv(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    pip("install", "--quiet", "setuptools<81", "wheel", "ninja")
    with tempfile.TemporaryDirectory(prefix="mmcv-build-") as tmp:
        pip("download", "--quiet", "--no-deps", "--no-binary", "mmcv", "--no-build-isolation", "-d", tmp,
            f"mmcv=={MMCV_VERSION}")
        (sdist,) = Path(tmp).glob("mmcv-*.tar.gz")
        with tarfile.open(sdist) as t:
            t.extractall(tmp, filter="data")
        src = Path(tmp) / f"mmcv-{MMCV_VERSION}"
        setup = src / "setup.py"
        text, n = re.subn(r"-std=c\+\+1[147]", "-std=c++20", setup.read_text())
        if n == 0:
            raise SystemExit(f"{setup}: no -std=c++14/17 flag to replace; this mmcv version needs another fix")
        setup.write_text(text)
        env = {**os.environ, "MMCV_WITH_OPS": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))}
        if not _has_nvcc():
            env["FORCE_CUDA"] = "0"
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src), env=env)
    return _cached(dest)


def _has_nvcc() -> bool:
    from shutil import which

    return which("nvcc") is not None


def _cached(dest: Path) -> Path | None:
    found = sorted(dest.glob(f"mmcv-{MMCV_VERSION}-*.whl"))
    return found[-1] if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-yolov5", action="store_true", help="leave out mmyolo (GPL-3.0)")
    args = ap.parse_args(argv)
    dest = cache_dir()
    wheel = _cached(dest)
    if wheel is None:
        print(f"building mmcv {MMCV_VERSION} from its sdist (once per machine; cached in {dest})", flush=True)
        wheel = build_mmcv(dest)
    else:
        print(f"mmcv {MMCV_VERSION}: using the cached wheel {wheel}", flush=True)
    pip("install", "--quiet", str(wheel), *PACKAGES, *([] if args.no_yolov5 else YOLO_PACKAGES))
    subprocess.run([sys.executable, "-c", "import mmcv.ops, mmdet, mmengine"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
