"""Reading a job file: YAML with line numbers, so every error starts ``FILE:LINE: yaml.path:``."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from scheduler.policies.configs import POLICY_TYPES
from scheduler.space import DISTRIBUTION_TYPES
from scheduler.spec.checks import check_job
from scheduler.spec.job import Job
from scheduler.spec.schema import JobSpec
from trainers.errors import SpecError, did_you_mean


def load_job(path: str | Path) -> Job:
    """Read and validate a job YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{p}: cannot read the job file ({e.strerror})") from None
    return parse_job(text, source=p)


def parse_job(text: str, source: Path | None = None, base_dir: Path | None = None) -> Job:
    name = str(source) if source else "<job>"
    try:
        data = yaml.safe_load(text)
        lines = _line_map(yaml.compose(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{name}:{mark.line + 1}" if mark else name
        raise SpecError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise SpecError(f"{name}: expected a mapping of job keys at the top level, but got {type(data).__name__}")
    loc = Locator(name, lines)
    spec = check_schema(data, loc)
    if base_dir is None:
        base_dir = source.parent.resolve() if source else Path.cwd()
    return check_job(spec, loc, source, base_dir, text)


def check_schema(data: dict, loc: Locator | None = None) -> JobSpec:
    """The keys, types and ranges of a job mapping (not yet the rules across keys: ``check_job``)."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_errors(e, loc or Locator("<job>", {}))) from None


class Locator:
    def __init__(self, name: str, lines: dict[tuple, int]):
        self.name, self.lines = name, lines

    def __call__(self, path: tuple) -> str:
        dotted = _dotted(path)
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f"{self.name}:{self.lines[path[:n]]}: {dotted}"
        return f"{self.name}: {dotted}"


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def _line_map(node, path: tuple = ()) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            out.update({p: ln for p, ln in _line_map(v, path + (key,)).items() if p != path + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_line_map(v, path + (i,)))
    return out


_TAGS = set(DISTRIBUTION_TYPES) | set(POLICY_TYPES)


def _format_errors(e: ValidationError, loc: Locator) -> str:
    msgs = []
    for err in e.errors():
        path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _TAGS))
        path = tuple("$schema" if p == "schema_" else p for p in path)
        kind, got = err["type"], err.get("input")
        if kind == "extra_forbidden":
            parent = path[:-1]
            msgs.append(f"{loc(path)}: unknown key {path[-1]!r}" + (f" in {_dotted(parent)}" if parent else "")
                        + did_you_mean(str(path[-1]), _keys_at(err["loc"][:-1])))
        elif kind == "missing":
            msgs.append(f"{loc(path)}: required key is missing")
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msgs.append(f"{loc(path)}: unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
                        + did_you_mean(str(ctx.get("tag")), _TAGS))
        elif kind == "union_tag_not_found":
            msgs.append(f"{loc(path)}: missing 'type' key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            hint = did_you_mean(got, re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))) \
                if kind == "literal_error" and isinstance(got, str) else ""
            msgs.append(f"{loc(path)}: {msg}, but got {got!r}{hint}" if not isinstance(got, dict)
                        else f"{loc(path)}: {msg}")
    return "invalid job file:\n  " + "\n  ".join(msgs) if len(msgs) > 1 else msgs[0]


def _keys_at(loc: tuple) -> list[str]:
    """The keys the job file takes at a pydantic error location (names and aliases): what an unknown key there
    is compared with for "did you mean"."""
    node: typing.Any = JobSpec
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = next((f for n, f in node.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            node = field.annotation
        elif typing.get_origin(node) in (list, dict):  # a list index or a mapping's key
            node = typing.get_args(node)[-1]
        elif typing.get_origin(node) in _UNIONS:  # a discriminated union: the part is the member's tag
            node = next((m for m in typing.get_args(node) if _tag(m) == part), None)
            if node is None:
                return []
        else:
            return []
    node = _unwrap(node)
    if not (isinstance(node, type) and issubclass(node, BaseModel)):
        return []
    return [f.alias or n for n, f in node.model_fields.items()]


_UNIONS = (typing.Union, types.UnionType)


def _unwrap(node: typing.Any) -> typing.Any:
    """``Optional[X]`` and ``Annotated[X, ...]`` -> ``X``."""
    while True:
        if typing.get_origin(node) is typing.Annotated:
            node = typing.get_args(node)[0]
        elif typing.get_origin(node) in _UNIONS and type(None) in typing.get_args(node):
            rest = [a for a in typing.get_args(node) if a is not type(None)]
            node = rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]
        else:
            return node


def _tag(member: typing.Any) -> str | None:
    field = getattr(member, "model_fields", {}).get("type")
    args = typing.get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def locate(job: Job, path: tuple) -> str:
    """``FILE:LINE: dotted.path`` of a key of a parsed job (for errors found after parsing: a data path that does not
    exist, found by ``validate`` and by ``run`` before anything else)."""
    try:
        lines = _line_map(yaml.compose(job.text))
    except yaml.YAMLError:
        lines = {}
    return Locator(str(job.source) if job.source else "<job>", lines)(path)


def check_data_paths(job: Job) -> None:
    """A local ``training_data.path`` / ``validation_data.path`` must exist (relative paths from the job file's
    folder); storage URLs and data assets are looked up when the data is read."""
    from trainers.data.urls import is_url

    for key in ("training_data", "validation_data"):
        data = getattr(job.spec, key)
        if data is None or is_url(data.path) or data.path.startswith(("azureml:", "file://")):
            continue
        where = job.base_dir / data.path
        if not where.exists():
            raise SpecError(f"{locate(job, (key, 'path'))}: {data.path} does not exist (looked for {where.resolve()}); "
                            f"expected an MLTable folder, an MLTable file or a JSONL file"
                            + (", relative to the job file's folder" if not Path(data.path).is_absolute() else ""))
