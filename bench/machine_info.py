"""What every benchmark prints: the machine line (CPU model, cores, library versions, Python) and the
markdown table of an A/B benchmark's repeats."""

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


def repeats_table(per_repeat: dict[str, list[float]], medians: dict[str, float], fmt: str = "{:.2f}",
                  unit: str = "") -> str:
    """``| side | repeat 1 | ... | median |`` with one row per side (medians computed by the caller)."""
    n = max(len(v) for v in per_repeat.values())
    w = max(len("side"), *(len(s) for s in per_repeat))

    def cell(v: float, width: int) -> str:
        return (fmt.format(v) + unit).rjust(width)

    lines = [f"| {'side':<{w}}" + "".join(f" | repeat {r + 1}" for r in range(n)) + " | median |",
             "|" + "-" * (w + 2) + "|---------:" * n + "|-------:|"]
    for side, vals in per_repeat.items():
        lines.append(f"| {side:<{w}}" + "".join(f" | {cell(v, 8)}" for v in vals) + f" | {cell(medians[side], 6)} |")
    return "\n".join(lines)
