"""The job YAML: a validated model of the managed service's AutoML image job (SPEC §3, §4, §8, §14).

``load_job(path)`` reads a job file written for the managed service, unchanged, and returns a
:class:`Job`. Every problem is a :class:`~trainers.errors.SpecError` whose message starts with
``FILE:LINE: yaml.path:`` and says what was expected, e.g.::

    job.yml:7: limits.max_trials: expected an integer between 1 and 1000, but got 0

Both key spellings of §14 are accepted (``lr_scheduler`` / ``learning_rate_scheduler``) and rewritten
to the v2 name.

Nothing is accepted and then ignored. A key the spec defines either acts, or is refused here with
``not supported yet: <key>`` (``augmentations``; ``log_validation_loss: true`` for box tasks), or does
not apply to the job and is refused as such (``advanced_settings`` flags of §7.2 outside their task or
model). ``compute`` names the service's compute target: it is kept in the resolved job, and the trials
run on the Ray cluster instead (:meth:`Job.notes`). Whatever some trial could not train with (a crop,
a layer count, a distribution's extreme value) fails the job here, before any trial.

Our own additions live under one top-level key, ``visionsweep:`` (:class:`Extensions`), so they never
change the meaning of a spec key. One exception keeps its place because a policy is chosen by its
``type``: ``sweep.early_termination.type: asha`` (:class:`AshaPolicy`), which ``validate`` and the README
mark as a visionsweep extension.

Credentials (``visionsweep.storage_options`` values under key-, token-, password-, SAS- or
connection-string-like names, and secrets inside URLs: SAS ``sig=``, presigned-URL signatures,
``AccountKey=``, ``user:password@``) are shown as ``***`` in everything derived from the job: the stored
job file, the resolved job, ``validate``'s output (:func:`redact`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scheduler.space import DISTRIBUTION_TYPES, Choice, Distribution
from trainers import hyperparameters as hp
from trainers.errors import SpecError

_FORBID = ConfigDict(extra="forbid", populate_by_name=True)
# storage_options keys whose values are credentials: account_key, sas_token, connection_string, client_secret,
# aws_secret_access_key, aws_session_token, password, credential, token, key ...
_SECRET_KEY = re.compile(r"key|secret|token|passw|pwd|sas|credential|connection_string|sig", re.IGNORECASE)
# Credentials inside a string: a SAS signature (sig=), presigned S3 / GCS URLs, connection-string keys,
# password or token query parameters, and the password of user:password@host.
_INLINE_SECRET = re.compile(
    r"((?<![\w-])(?:sig|signature|x-(?:amz|goog)-(?:signature|credential|security-token)|accountkey|sharedaccesskey"
    r"|password|pwd|(?:access_|session_|sas_)?token|client_secret|api_?key)=)([^&;\s'\"#]+)"
    r"|(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:)([^@/\s'\"]+)@",
    re.IGNORECASE)
MASK = "***"


_MIN_SECRET = 4  # shorter values are masked where they are job values, but not searched for in free text


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials as ``***``: the given secret values wherever they occur, and secrets
    embedded in URLs and connection strings (only the signature, key or password: the rest of a URL
    stays readable)."""
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET and s != MASK}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _INLINE_SECRET.sub(lambda m: f"{m.group(1)}{MASK}" if m.group(1) else f"{m.group(3)}{MASK}@", text)


def _secret_values(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _secret_values(v)]
    if isinstance(node, (list, tuple)):
        return [s for v in node for s in _secret_values(v)]
    return [node] if isinstance(node, str) and node else []


def _mask_secret_keys(node: Any) -> Any:
    """A storage_options tree with every value under a credential-like key (at any depth) as ``***``."""
    if isinstance(node, dict):
        return {k: MASK if _SECRET_KEY.search(str(k)) else _mask_secret_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_secret_keys(v) for v in node]
    return node


def _redact_strings(node: Any, secrets: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _redact_strings(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_redact_strings(v, secrets) for v in node]
    return redact(node, secrets) if isinstance(node, str) else node


class DataInput(BaseModel):
    """``training_data`` / ``validation_data``: an MLTable folder, an MLTable file or a JSONL file (§2.6)."""

    model_config = _FORBID
    path: str = Field(min_length=1)
    type: Literal["mltable", "uri_file", "uri_folder"] = "mltable"


class Limits(BaseModel):
    """``limits`` (§3.2); ``max_concurrent_trials`` is clamped to ``max_trials`` and the value rewritten."""

    model_config = _FORBID
    timeout_minutes: int = Field(10080, ge=1, le=86400)
    max_trials: int = Field(1, ge=1, le=1000)
    max_concurrent_trials: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _clamp(self):
        self.max_concurrent_trials = min(self.max_concurrent_trials, self.max_trials)
        return self


class _Policy(BaseModel):
    model_config = _FORBID
    evaluation_interval: int = Field(1, ge=1)
    delay_evaluation: int = Field(0, ge=0)


class BanditPolicy(_Policy):
    type: Literal["bandit"]
    slack_factor: Optional[float] = Field(None, gt=0)
    slack_amount: Optional[float] = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_slack(self):
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise ValueError("bandit needs exactly one of slack_factor or slack_amount")
        return self


class MedianStoppingPolicy(_Policy):
    type: Literal["median_stopping"]


class TruncationSelectionPolicy(_Policy):
    type: Literal["truncation_selection"]
    truncation_percentage: int = Field(ge=1, le=99)
    exclude_finished_jobs: bool = False


class AshaPolicy(BaseModel):
    """``type: asha``: asynchronous successive halving (our addition; the policy AutoMode uses).

    The budget is counted in epochs: trials are compared at rungs grace_period * reduction_factor^i
    and only the top 1/reduction_factor go on, up to ``max_epochs`` (default: the trials' epochs).
    """

    model_config = _FORBID
    type: Literal["asha"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_epochs: Optional[int] = Field(None, ge=1)


EarlyTermination = Annotated[
    Union[BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy, AshaPolicy], Field(discriminator="type")
]
POLICY_TYPES = ("bandit", "median_stopping", "truncation_selection", "asha")


class Sweep(BaseModel):
    """``sweep`` (§3.5)."""

    model_config = _FORBID
    sampling_algorithm: Literal["random", "grid", "bayesian"]
    early_termination: Optional[EarlyTermination] = None

    @field_validator("sampling_algorithm", mode="before")
    @classmethod
    def _lower(cls, v):
        return v.lower() if isinstance(v, str) else v


class Properties(BaseModel):
    """``properties`` (§3.6): free-form job properties; ``node_count_per_trial`` is a string-encoded int."""

    model_config = ConfigDict(extra="allow")
    node_count_per_trial: int = Field(1, ge=1)


class AdvancedSettings(BaseModel):
    """``training_parameters.advanced_settings`` (§3.7): a JSON object written as a string."""

    model_config = _FORBID
    apply_mosaic_for_yolo: bool = True
    apply_automl_train_augmentations: bool = True
    stream_image_files: bool = False


class Tracking(BaseModel):
    """``visionsweep.tracking``: MLflow tracking of the sweep (parent run) and its trials (child runs)."""

    model_config = _FORBID
    enabled: bool = True
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default sqlite:///RUN/mlflow.db")
    experiment: Optional[str] = Field(None, description="default: experiment_name, else 'visionsweep'")
    register_model: Optional[str] = Field(None, description="register the best model under this name")


class Cache(BaseModel):
    """``visionsweep.cache``: the node-local image cache shared by all trials on a node (SPEC §11.2)."""

    model_config = _FORBID
    dir: Optional[str] = Field(None, description="default: $VISIONSWEEP_CACHE_DIR, else $TMPDIR/visionsweep-cache")
    max_size_gb: Optional[float] = Field(None, gt=0, description="default: 80% of the free disk there, at most 100")


class Extensions(BaseModel):
    """``visionsweep:``: settings of this implementation that the managed service has no key for."""

    model_config = _FORBID
    datastores: dict[str, str] = Field(
        default_factory=dict,
        description="datastore name -> storage URL, used to resolve azureml://.../datastores/<name>/paths/<p> "
                    "and AmlDatastore://<p> (datastore 'default' or 'workspaceblobstore') image URLs",
    )
    storage_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="fsspec protocol -> keyword arguments for that filesystem")
    bad_images: Literal["error", "skip"] = Field(
        "error", description="missing or undecodable images: 'error' lists them and stops before training; "
                             "'skip' drops them with a warning")
    seed: int = Field(0, ge=0, description="seed of the sampler and the train/validation split")
    pretrained: bool = Field(True, description="start every model from the published pretrained weights its name "
                                               "stands for (false: random initialisation)")
    pretrained_weights: dict[str, str] = Field(
        default_factory=dict, description="model_name -> weights file path or URI (safetensors or a state_dict; a "
                                          "save_pretrained folder for Hugging Face models): wins over every other source")
    weights_store: Optional[str] = Field(
        None, description="a folder or storage URL holding weights files under the manifest's names (default: "
                          "$VISIONSWEEP_WEIGHTS_STORE); how an air-gapped cluster gets them: visionsweep weights pull")
    download_weights: bool = Field(True, description="fetch weights found nowhere else from their origin (the "
                                                     "library's URL or the Hugging Face hub; needs internet)")
    resume_from: list[str] = Field(default_factory=list, max_length=5,
                                   description="up to 5 earlier run folders to warm-start from (§8.7)")
    tracking: Tracking = Field(default_factory=Tracking)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: Optional[float] = Field(None, ge=0, description="default: 1 when the cluster has GPUs, else 0; "
                                            "a data-parallel trial takes whole GPUs, one per worker")
    workers_per_node: Optional[int] = Field(
        None, ge=1, description="data-parallel workers of a trial on each of its nodes; default: the GPUs of a "
                                "node (all of them unless distributed: false), 1 on CPU-only clusters")
    trial_retries: int = Field(2, ge=0, description="restarts of a trial (from its last checkpoint) after its "
                                                    "process or node dies; errors of the job's own settings "
                                                    "are not retried")
    mixed_precision: bool = Field(True, description="autocast (bf16, else fp16) on CUDA")
    channels_last: bool = Field(True, description="NHWC memory format on CUDA")
    cache: Cache = Field(default_factory=Cache)


class JobSpec(BaseModel):
    """The whole job file (§3.1 and the top-level keys of §14)."""

    model_config = _FORBID
    schema_: Optional[str] = Field(None, alias="$schema")
    type: Literal["automl"] = "automl"
    name: Optional[str] = None
    display_name: Optional[str] = None
    experiment_name: Optional[str] = None
    description: Optional[str] = None
    tags: dict[str, Any] = Field(default_factory=dict)
    compute: str = "local"
    log_verbosity: Literal["not_set", "debug", "info", "warning", "error", "critical"] = "info"
    primary_metric: Optional[str] = None
    outputs: dict[str, Any] = Field(default_factory=dict)

    task: Literal[hp.MULTICLASS, hp.MULTILABEL, hp.DETECTION, hp.SEGMENTATION]
    target_column_name: str = Field(min_length=1)
    training_data: DataInput
    validation_data: Optional[DataInput] = None
    validation_data_size: Optional[float] = Field(None, gt=0, lt=1)
    limits: Limits = Field(default_factory=Limits)
    training_parameters: dict[str, Any] = Field(default_factory=dict)
    search_space: Optional[list[dict[str, Distribution]]] = None
    sweep: Optional[Sweep] = None
    properties: Properties = Field(default_factory=Properties)
    visionsweep: Extensions = Field(default_factory=Extensions)

    @field_validator("search_space")
    @classmethod
    def _non_empty(cls, v):
        if v is not None and (len(v) == 0 or any(len(sub) == 0 for sub in v)):
            raise ValueError("expected a non-empty list of non-empty sub-spaces")
        return v


@dataclass
class Job:
    """A validated job: the spec, where it came from, and the values resolved from it."""

    spec: JobSpec
    source: Path | None
    base_dir: Path
    text: str
    training_parameters: dict[str, Any]  # canonical v2 names, coerced
    search_space: list[dict[str, Any]] | None  # canonical names -> Distribution
    advanced: AdvancedSettings = field(default_factory=AdvancedSettings)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def primary_metric(self) -> str:
        return hp.PRIMARY_METRIC[self.spec.task]

    @property
    def mode(self) -> str:
        """``single``, ``manual`` or ``automode`` (§4.1)."""
        if self.search_space is not None:
            return "manual"
        return "automode" if self.spec.limits.max_trials > 1 else "single"

    def model_names(self) -> list[str]:
        """Every model_name a trial of the job can train (AutoMode: every candidate it may pick)."""
        return _models(self.task, self.training_parameters, self.search_space, self.spec.limits.max_trials)

    def model_sizes(self) -> list[str]:
        """The yolov5 ``model_size`` values a trial can take (the default when the job sets none)."""
        out = [self.training_parameters["model_size"]] if "model_size" in self.training_parameters else []
        for sub in self.search_space or []:
            d = sub.get("model_size")
            out += [hp.check_param(self.task, "model_size", v, "model_size", "yolov5") for v in getattr(d, "values", [])]
        return list(dict.fromkeys(out)) or [hp.PARAMS["model_size"].default]

    @property
    def validation_fraction(self) -> float:
        if self.spec.validation_data_size is not None:
            return self.spec.validation_data_size
        return self.training_parameters.get("split_ratio") or 0.2

    def secrets(self) -> list[str]:
        """Values under ``visionsweep.storage_options`` that look like credentials (keys, tokens, SAS,
        passwords, connection strings; nested ones too): never written to the run folder or printed."""
        out = []
        for opts in self.spec.visionsweep.storage_options.values():
            for k, v in _walk_items(opts):
                if _SECRET_KEY.search(str(k)) and isinstance(v, (str, list)):
                    out += _secret_values(v)
        return [s for s in out if s != MASK]

    def redacted_text(self) -> str:
        """The job file as submitted, with credentials as ``***``: still valid YAML (a masked value is the
        quoted scalar ``'***'``), so a run folder's ``job.yml`` parses again."""
        text = self.text
        spans = _secret_spans(yaml.compose(text), ())
        for start, end in sorted(spans, reverse=True):
            while end > start and text[end - 1] in " \t\r\n":
                end -= 1
            text = text[:start] + f"'{MASK}'" + text[end:]
        return redact(text, self.secrets())

    def resolved(self) -> dict[str, Any]:
        """The job as it will run: defaults filled in, limits clamped, v2 key names; credentials as ``***``."""
        d = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        ext = d.get("visionsweep", {})
        if "storage_options" in ext:
            ext["storage_options"] = _mask_secret_keys(ext["storage_options"])
        d["primary_metric"] = self.primary_metric
        d["training_parameters"] = dict(self.training_parameters)
        d["training_parameters"]["advanced_settings"] = self.advanced.model_dump()
        if self.search_space is not None:
            d["search_space"] = [{k: v.model_dump(mode="json") for k, v in sub.items()} for sub in self.search_space]
        d["mode"] = self.mode
        return _redact_strings(d, self.secrets())

    def notes(self) -> list[str]:
        """What the user should know about how visionsweep reads this job (``validate`` and ``run`` print them)."""
        out = []
        if "compute" in self.spec.model_fields_set and self.spec.compute != "local":
            out.append(f"compute: {self.spec.compute!r} names the managed service's compute target; visionsweep "
                       "runs the trials on the Ray cluster instead (RAY_ADDRESS, else an embedded local Ray)")
        if not self.spec.visionsweep.pretrained:
            out.append("visionsweep.pretrained: false: every model starts from random initialisation, not from its "
                       "published pretrained weights")
        if isinstance(self.policy, AshaPolicy):
            out.append("sweep.early_termination.type: asha is a visionsweep extension, not a policy of the managed "
                       "service (whose job files take bandit, median_stopping or truncation_selection)")
        return out

    def warnings(self) -> list[str]:
        """Settings that are valid but cannot do what they are there for (``validate`` and ``run`` print them)."""
        out = []
        policy = self.policy
        if isinstance(policy, TruncationSelectionPolicy) and policy.exclude_finished_jobs:
            c, pct = self.spec.limits.max_concurrent_trials, policy.truncation_percentage
            if math.floor(c * pct / 100) == 0:
                out.append(
                    f"sweep.early_termination: truncation_selection with exclude_finished_jobs: true ranks only "
                    f"the trials running at the same time, at most limits.max_concurrent_trials = {c}; it cancels "
                    f"floor({c} x {pct}%) = 0 of them, so it can never stop a trial (raise max_concurrent_trials "
                    f"to {math.ceil(100 / pct)} or more, or set exclude_finished_jobs: false)")
        return out

    @property
    def policy(self):
        return self.spec.sweep.early_termination if self.spec.sweep else None


def _walk_items(node: Any):
    """Every (key, value) pair of a nested mapping, at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _walk_items(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_items(v)


def _secret_spans(node, path: tuple) -> list[tuple[int, int]]:
    """Character spans of the YAML value nodes that hold credentials: under ``visionsweep.storage_options``,
    the value of every credential-like key (whole, when it is a mapping)."""
    out: list[tuple[int, int]] = []
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else ""
            here = path + (key,)
            opts = here[:2] == ("visionsweep", "storage_options") and len(here) > 3
            if opts and _SECRET_KEY.search(str(key)):
                out.append((v.start_mark.index, v.end_mark.index))
            else:
                out += _secret_spans(v, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _secret_spans(v, path + (i,))
    return out


# --- loading ----------------------------------------------------------------------------------

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
    loc = _Locator(name, lines)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_format_errors(e, loc)) from None
    if base_dir is None:
        base_dir = source.parent.resolve() if source else Path.cwd()
    return _check(spec, loc, source, base_dir, text)


class _Locator:
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


def _format_errors(e: ValidationError, loc: _Locator) -> str:
    msgs = []
    for err in e.errors():
        path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _TAGS))
        path = tuple("$schema" if p == "schema_" else p for p in path)
        kind, got = err["type"], err.get("input")
        if kind == "extra_forbidden":
            parent = path[:-1]
            msgs.append(f"{loc(path)}: unknown key {path[-1]!r}" + (f" in {_dotted(parent)}" if parent else ""))
        elif kind == "missing":
            msgs.append(f"{loc(path)}: required key is missing")
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msgs.append(f"{loc(path)}: unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}")
        elif kind == "union_tag_not_found":
            msgs.append(f"{loc(path)}: missing 'type' key")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            msgs.append(f"{loc(path)}: {msg}, but got {got!r}" if not isinstance(got, dict) else f"{loc(path)}: {msg}")
    return "invalid job file:\n  " + "\n  ".join(msgs) if len(msgs) > 1 else msgs[0]


def _canonical_keys(d: dict[str, Any], loc: _Locator, path: tuple) -> dict[str, Any]:
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for k, v in d.items():
        c = hp.canonical_name(k)
        if c in out:
            raise SpecError(f"{loc(path + (k,))}: {given[c]!r} and {k!r} are two spellings of {c!r}; keep one")
        out[c], given[c] = v, k
    return out


def _check(spec: JobSpec, loc: _Locator, source: Path | None, base_dir: Path, text: str) -> Job:
    """Rules that span several keys or need the task (§3, §6.7, §8.2)."""
    task = spec.task
    if spec.primary_metric is not None and spec.primary_metric != hp.PRIMARY_METRIC[task]:
        raise SpecError(f"{loc(('primary_metric',))}: task {task} is optimised for "
                        f"{hp.PRIMARY_METRIC[task]!r} only, but got {spec.primary_metric!r}")

    # training_parameters: canonical names, types and applicability.
    raw_tp = _canonical_keys(spec.training_parameters, loc, ("training_parameters",))
    advanced = _advanced(raw_tp.pop("advanced_settings", None), loc)
    fixed_model = raw_tp.get("model_name")
    tp: dict[str, Any] = {}
    for k, v in raw_tp.items():
        where = loc(("training_parameters", k))
        tp[k] = hp.check_param(task, k, v, where, fixed_model if k != "model_name" else None)
        _check_supported_values(task, k, [tp[k]], where)
    if tp.get("validation_metric_type") == "none" and (spec.limits.max_trials > 1 or spec.sweep is not None):
        raise SpecError(f"{loc(('training_parameters', 'validation_metric_type'))}: 'none' computes no "
                        f"{hp.PRIMARY_METRIC[task]}, which a sweep needs to compare trials and stop them early; "
                        "use voc, coco or coco_voc, or run a single trial (limits.max_trials: 1)")
    if "split_ratio" in tp and spec.validation_data_size is not None:
        raise SpecError(f"{loc(('training_parameters', 'split_ratio'))}: give either validation_data_size "
                        "or split_ratio, not both")

    if spec.properties.node_count_per_trial > 1 and tp.get("distributed") is False:
        raise SpecError(f"{loc(('properties', 'node_count_per_trial'))}: {spec.properties.node_count_per_trial} nodes "
                        "per trial need data-parallel training, but training_parameters.distributed is false; "
                        "remove one of them")
    space = None
    if spec.search_space is not None:
        if spec.sweep is None:
            raise SpecError(f"{loc(('search_space',))}: a search_space needs sweep.sampling_algorithm "
                            "(random, grid or bayesian)")
        space = [_check_subspace(task, sub, i, tp, loc) for i, sub in enumerate(spec.search_space)]
        _check_sampler(spec.sweep, space, loc)
    elif spec.sweep is not None:
        raise SpecError(f"{loc(('sweep',))}: sweep is given without a search_space; give a search_space, "
                        "or drop sweep to let AutoMode choose (limits.max_trials > 1)")
    else:  # one trial of the fixed values, or AutoMode's models with them
        models = _models(task, tp, None, spec.limits.max_trials)
        at = _locations(loc, tp, {})
        try:
            hp.check_combination(task, {**{k: [v] for k, v in tp.items()}, "model_name": models}, at)
        except SpecError as e:
            if "model_name" in tp or spec.limits.max_trials == 1:
                raise
            raise SpecError(f"{e} (AutoMode, limits.max_trials > 1 without a search_space, can pick "
                            f"{', '.join(models)})") from None
    _check_advanced(task, advanced, _models(task, tp, space, spec.limits.max_trials), loc)
    return Job(spec=spec, source=source, base_dir=base_dir, text=text,
               training_parameters=tp, search_space=space, advanced=advanced)


def _models(task: str, tp: dict[str, Any], space: list[dict[str, Any]] | None, max_trials: int) -> list[str]:
    """Every model_name a trial of the job can train: the sub-spaces' choices, the fixed one, the task
    default, or what AutoMode may pick (on either hardware) within the budget."""
    fixed = tp.get("model_name")
    if space is not None:
        out = [m for sub in space for m in (sub["model_name"].values if "model_name" in sub
                                            else [fixed or hp.DEFAULT_MODEL[task]])]
    elif fixed:
        out = [fixed]
    elif max_trials > 1:
        from scheduler import automode

        out = [m["model_name"] for gpu in (True, False) for m in automode.plan(task, max_trials, tp, gpu)["models"]]
    else:
        out = [hp.DEFAULT_MODEL[task]]
    return list(dict.fromkeys(out))


def _locations(loc: _Locator, tp: dict[str, Any], sub: dict[str, Any], base: tuple = ("training_parameters",)
               ) -> Callable[[str], str]:
    """name -> where the job sets it: the sub-space, training_parameters, else the sub-space (or section)."""
    def at(name: str) -> str:
        if name in sub:
            return loc(base + (name,))
        if name in tp:
            return loc(("training_parameters", name))
        return loc(base)
    return at


def _check_supported_values(task: str, name: str, values: list[Any], where: str) -> None:
    """Values a key accepts in the spec but that would do nothing here."""
    if name == "log_validation_loss" and task in hp.BOX_TASKS and True in values:
        raise SpecError(f"{where}: not supported yet: log_validation_loss: true for {task} (the detectors "
                        "compute no loss in evaluation mode, so box tasks log no validation loss); remove it "
                        "or set it to false")


def _check_advanced(task: str, advanced: AdvancedSettings, models: list[str], loc: _Locator) -> None:
    """§3.7 / §7.2: an augmentation flag set for a task or model it does not act on is refused, not ignored."""
    where = loc(("training_parameters", "advanced_settings"))
    given = advanced.model_fields_set
    if "apply_automl_train_augmentations" in given and task not in hp.BOX_TASKS:
        raise SpecError(f"{where}: apply_automl_train_augmentations applies to object detection and instance "
                        f"segmentation only (§7.2), not to {task}; remove it")
    if "apply_mosaic_for_yolo" in given and "yolov5" not in models:
        raise SpecError(f"{where}: apply_mosaic_for_yolo applies to yolov5 only (§3.7), but this job trains "
                        f"{', '.join(models)}; remove it")


def _advanced(value: Any, loc: _Locator) -> AdvancedSettings:
    path = ("training_parameters", "advanced_settings")
    if value is None:
        return AdvancedSettings()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SpecError(f"{loc(path)}: expected a JSON object in a string, but the JSON is invalid ({e.msg})") from None
    if not isinstance(value, dict):
        raise SpecError(f"{loc(path)}: expected a JSON object, but got {value!r}")
    try:
        return AdvancedSettings.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        what = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        raise SpecError(f"{loc(path)}: {what} {key!r}; expected keys: "
                        f"{', '.join(AdvancedSettings.model_fields)}") from None


def _check_subspace(task: str, sub: dict[str, Any], i: int, tp: dict, loc: _Locator) -> dict[str, Any]:
    base = ("search_space", i)
    sub = _canonical_keys(sub, loc, base)
    models: list[str | None] = [tp.get("model_name")]
    if "model_name" in sub:
        d = sub["model_name"]
        if not isinstance(d, Choice):
            raise SpecError(f"{loc(base + ('model_name',))}: model_name must use type: choice, but got {d.type!r}")
        models = [hp.check_model_name(task, m, loc(base + ("model_name",))) for m in d.values]
    # the values each parameter can take in this sub-space, for the rules across parameters
    values: dict[str, list[Any]] = {k: [v] for k, v in tp.items()}
    drawn: set[str] = set()
    for name, dist in sub.items():
        where = loc(base + (name,))
        if name in tp:
            raise SpecError(f"{where}: {name!r} is both fixed in training_parameters and swept in search_space; "
                            "keep it in one place")
        if name in hp.NON_SWEEPABLE:
            raise SpecError(f"{where}: {name!r} cannot be swept")
        if name == "model_name":
            values[name] = list(dist.values)
            continue
        for m in models:
            if isinstance(dist, Choice):
                dist.values = [hp.check_param(task, name, v, where, m) for v in dist.values]
            else:
                ends = _check_distribution(task, name, dist, where, m)
        if isinstance(dist, Choice):
            _check_supported_values(task, name, dist.values, where)
            values[name] = list(dist.values)
        elif ends is None:  # unbounded: each trial draws its own value, which only the trial can check
            drawn.add(name)
        else:
            values[name] = sorted(set(ends))
            if len(values[name]) > 1:
                drawn.add(name)
    for name in tp:  # fixed parameters must apply to every model the sub-space can choose
        for m in models:
            if name != "model_name":
                hp.check_param(task, name, tp[name], loc(("training_parameters", name)), m)
    hp.check_combination(task, values, _locations(loc, tp, sub, base), drawn)
    return sub


_KIND_WORDS = {"bool": "a boolean", "str": "a string", "grid": "a grid such as '3x2'"}


def _check_distribution(task: str, name: str, dist: Any, where: str, model: str | None) -> list[float] | None:
    """A distribution other than choice for one hyperparameter: it applies, it yields the parameter's type,
    and the smallest and largest values it produces are valid, so no trial fails on the value it drew.
    Returns those two values, or None when the distribution is unbounded (the normal family)."""
    p = hp.check_applies(task, name, where, model)
    if p.kind not in ("int", "float"):
        raise SpecError(f"{where}: {name} takes {_KIND_WORDS[p.kind]}: sweep it with type: choice, "
                        f"but got type: {dist.type}")
    if p.kind == "int" and not dist.integral:
        raise SpecError(f"{where}: {name} takes integers, but {dist.type} draws fractional values; use choice, "
                        "randint, or quniform / qloguniform / qnormal / qlognormal with a whole-number q")
    ends = dist.extremes()
    if ends is None:
        return None
    for (value, formula), which in zip(ends, ("smallest", "largest")):
        try:
            hp.check_param(task, name, value, "", model)
        except SpecError as e:
            hint = " (loguniform and qloguniform bounds are natural-log exponents, §8.1)" if "log" in dist.type else ""
            shown = formula if formula == f"{value:g}" else f"{formula} = {value:g}"
            raise SpecError(f"{where}: the {which} value this {dist.type} produces, {shown}, is not valid: "
                            f"{str(e).removeprefix(': ')}{hint}") from None
    return [value for value, _ in ends]


def _check_sampler(sweep: Sweep, space: list[dict[str, Any]], loc: _Locator) -> None:
    algo = sweep.sampling_algorithm
    for i, sub in enumerate(space):
        for name, dist in sub.items():
            if algo == "grid" and not isinstance(dist, Choice):
                raise SpecError(f"{loc(('search_space', i, name))}: grid sampling takes only type: choice, "
                                f"but got {dist.type!r}")
            if algo == "bayesian" and dist.type not in ("choice", "uniform", "quniform"):
                raise SpecError(f"{loc(('search_space', i, name))}: bayesian sampling takes only choice, uniform "
                                f"and quniform, but got {dist.type!r}")
    if algo == "bayesian":
        if len(space) > 1:
            raise SpecError(f"{loc(('search_space',))}: bayesian sampling takes one sub-space, "
                            f"but got {len(space)} (conditional spaces need random or grid)")
        if sweep.early_termination is not None:
            raise SpecError(f"{loc(('sweep', 'early_termination'))}: bayesian sampling cannot be combined with "
                            "an early_termination policy (§8.2); remove one of them")

