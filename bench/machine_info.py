"""The machine line every benchmark prints: CPU model, cores, library versions, Python."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe(*libraries: str) -> str:
    """e.g. ``describe("torch", "ray")`` -> "Intel Xeon ...; 2 logical cores; torch 2.14.1; ray 2.60.0; Python 3.11.7"."""
    parts = [cpu_model(), f"{os.cpu_count()} logical cores"]
    parts += [f"{name} {importlib.import_module(name).__version__}" for name in libraries]
    return "; ".join(parts + [f"Python {platform.python_version()}"])
