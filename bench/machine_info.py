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
    """e.g. ``describe("torch", "ray")``
    -> "Intel Xeon ...; 2 logical cores; torch 2.14.1; ray 2.60.0; Python 3.11.7"."""
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


def alternate(sides: dict, args: tuple, repeats: int, epochs: int, target: float, fmt: str = "{:.1f}") -> int:
    """Run ``sides`` (name -> fn(*args) returning per-epoch images/s, first epoch a warm-up) alternately,
    A B, B A, A B ...; print each run, the repeats table and ``ratio visionsweep / plain`` against
    ``target``. Returns the exit code: 0 PASS, 1 FAIL."""
    import statistics

    per_repeat: dict[str, list[float]] = {s: [] for s in sides}
    pooled: dict[str, list[float]] = {s: [] for s in sides}
    for r in range(repeats):
        order = list(sides.items()) if r % 2 == 0 else list(reversed(sides.items()))  # A B, then B A
        for side, fn in order:
            rates = fn(*args)[1:]  # skip the warm-up epoch
            per_repeat[side].append(statistics.median(rates))
            pooled[side].extend(rates)
            print(f"  repeat {r + 1} {side:<12} epochs 2..{epochs}: "
                  + ", ".join(fmt.format(v) for v in rates) + " img/s", flush=True)
    print()
    med = {side: statistics.median(pooled[side]) for side in sides}
    print(repeats_table(per_repeat, med, fmt))
    return verdict(med, target, higher_is_better=True)


def verdict(medians: dict[str, float], target: float, higher_is_better: bool, gap: str = "\n") -> int:
    """Print ``ratio visionsweep / plain`` against ``target``; the exit code: 0 PASS, 1 FAIL."""
    ratio = medians["visionsweep"] / medians["plain"]
    ok = ratio >= target if higher_is_better else ratio <= target
    print(f"{gap}ratio visionsweep / plain = {ratio:.3f}  (target {'>=' if higher_is_better else '<='} {target})  "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1
