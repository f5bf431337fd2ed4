"""The house: no import circle among visionsweep's modules, and the top level only imports downwards
(visionsweep, the public Python API -> scheduler -> serving -> trainers; cluster beside them).

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from ... import`` of a project
module, at module level or inside a function, is an edge (an import inside a function still ties the two
modules together; it only hides the circle until the function runs). A module importing its own package's
``__init__`` is not counted, nor is an import under ``if TYPE_CHECKING:``.

Tasks own their behaviour: no module of scheduler/, serving/, trainers/package/ or visionsweep/ compares a value with
a task's name (a ``task:`` literal, ``hp.DETECTION`` ..., or a group such as ``hp.BOX_TASKS``); what differs between
tasks is asked of the task (``trainers.tasks``) or looked up in the tables of ``trainers/hyperparameters.py`` and
``trainers/data/``.

And the readers stay light: reading a run folder (``visionsweep status``, ``visionsweep report`` of a finished run,
``Result.load``) imports neither Ray nor torch, checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("visionsweep", "scheduler", "trainers", "serving", "cluster")
# what each top-level package may import (besides itself)
ALLOWED = {"visionsweep": {"scheduler", "trainers", "serving", "cluster"},
           "scheduler": {"trainers", "serving", "cluster"}, "serving": {"trainers", "cluster"},
           "trainers": set(), "cluster": {"trainers"}}


def _modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES:
        for p in (ROOT / top).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        skip = {id(n) for stmt in tree.body if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test)
                for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[m] |= {t for t in targets if t in mods and t != m and not m.startswith(t + ".")}
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_in_a_circle():
    assert _circles(_edges(_modules())) == []


def test_the_top_level_packages_import_downwards_only():
    wrong = sorted(f"{a} -> {b}" for a, bs in _edges(_modules()).items() for b in bs
                   if a.split(".")[0] != b.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]])
    assert wrong == []


def test_no_library_module_imports_the_commands():
    """The commands (visionsweep.cli) call the library; the library, the Python API included, never calls them."""
    wrong = sorted(f"{a} -> {b}" for a, bs in _edges(_modules()).items() for b in bs
                   if (b + ".").startswith("visionsweep.cli.") and not (a + ".").startswith("visionsweep.cli."))
    assert wrong == []


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


HEAVY = ("ray", "torch")  # what a reader of a run folder must not import

# In a fresh interpreter: the CLI's status and report of a finished run, Result.load and a registry reference's
# parsing, then the top-level packages now imported. The CLI's own output goes to a buffer: stdout is ours.
_READ_A_RUN = """
import contextlib, io, json, sys
import scheduler.report, scheduler.status
from visionsweep.cli import main
import trainers.package.references as references
from visionsweep.results import Result

run = sys.argv[1]
with contextlib.redirect_stdout(io.StringIO()) as status:
    codes = [main(["status", run, "--json"])]
with contextlib.redirect_stdout(io.StringIO()):
    codes.append(main(["report", run]))
result = Result.load(run)
references.registry_model_uri("azureml:fashion:3")
print(json.dumps({"codes": codes, "status": json.loads(status.getvalue()),
                  "best": [result.best_trial, result.best_metric, result.best_params],
                  "loaded": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _finished_run(run: Path) -> None:
    """A finished sweep's run folder as the controller leaves it (two trials, no model)."""
    for tid, lr, accs in (("t1", 0.01, [0.5, 0.75]), ("t2", 0.1, [0.25, 0.5])):
        d = run / "trials" / tid
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"sampled": {"learning_rate": lr},
                                                   "fixed": {"number_of_epochs": 2}, "default": {}}))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "accuracy": a}) + "\n"
                                                 for i, a in enumerate(accs)))
        (d / "status.json").write_text(json.dumps({"status": "completed", "started": 1000.0, "ended": 1060.0}))
    (run / "summary.json").write_text(json.dumps({"primary_metric": "accuracy", "trials": 2, "best_trial": "t1",
                                                  "best_metric": 0.75, "elapsed_s": 60.0}))
    (run / "job.resolved.yaml").write_text("task: image_classification\nprimary_metric: accuracy\n"
                                           "training_parameters: {model_name: resnet18}\n")


def test_reading_a_run_folder_imports_neither_ray_nor_torch(tmp_path):
    run = tmp_path / "run"
    _finished_run(run)
    proc = subprocess.run([sys.executable, "-c", _READ_A_RUN, str(run)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # it did read the run: status, report and the result agree on the best trial
    assert got["codes"] == [0, 0] and (run / "report.html").is_file()
    assert (got["status"]["state"], got["status"]["best_trial"]) == ("finished", "t1")
    assert got["best"] == ["t1", 0.75, {"learning_rate": 0.01, "number_of_epochs": 2}]
    assert [m for m in HEAVY if m in got["loaded"]] == []


# --- tasks own their behaviour ------------------------------------------------------------------

NO_TASK_BRANCH = ("scheduler", "serving", "trainers/package", "visionsweep")
# the task literals of the job file (trainers/hyperparameters.py), read from its source, and the names given to them
_HP = (ROOT / "trainers" / "hyperparameters.py").read_text()
TASK_LITERALS = set(re.findall(r'^[A-Z]+ = "(image_[a-z_]+)"$', _HP, re.M))
TASK_NAMES = {"MULTICLASS", "MULTILABEL", "DETECTION", "SEGMENTATION", "TASKS", "CLASSIFICATION_TASKS", "BOX_TASKS"}


def _names_a_task(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in TASK_LITERALS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_task(e) for e in node.elts)
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    return name in TASK_NAMES


def _task_branches(source: str, where: str) -> list[str]:
    """``where:line: code`` of every comparison (``==``, ``!=``, ``in``, ``not in``, ``is``) with a task's name."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(_names_a_task(n) for n in (node.left, *node.comparators)):
            out.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_no_task_branch_outside_the_tasks():
    assert len(TASK_LITERALS) == 4, TASK_LITERALS  # the reading of trainers/hyperparameters.py still works
    found = [b for folder in NO_TASK_BRANCH for p in sorted((ROOT / folder).rglob("*.py"))
             for b in _task_branches(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "ask the task (trainers.tasks) or a table of trainers/hyperparameters.py instead:\n" + \
        "\n".join(found)


def test_the_task_branch_finder_finds_branches():
    src = """
if task == hp.SEGMENTATION: pass
if pkg.task in hp.CLASSIFICATION_TASKS: pass
ok = t != "image_object_detection"
fine = TABLE[task] if task in hp.PARAMS[name].tasks else None
"""
    assert [b.split(": ", 1)[0] for b in _task_branches(src, "x.py")] == ["x.py:2", "x.py:3", "x.py:4"]
