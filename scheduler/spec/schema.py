"""The job file's keys as pydantic models (SPEC §3.1, §3.2, §3.5-§3.7, §14): types, ranges and defaults.

:class:`JobSpec` is the whole file; the rules that span several keys or need the task are in
``scheduler.spec.checks``. Our own settings are :class:`Extensions` under the top-level ``visionsweep:`` key.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scheduler.policies.configs import EarlyTermination
from scheduler.space import Distribution
from trainers import hyperparameters as hp

FORBID = ConfigDict(extra="forbid", populate_by_name=True)


class DataInput(BaseModel):
    """``training_data`` / ``validation_data``: an MLTable folder, an MLTable file or a JSONL file (§2.6)."""

    model_config = FORBID
    path: str = Field(min_length=1)
    type: Literal["mltable", "uri_file", "uri_folder"] = "mltable"
    # the service's input mode: kept, with a note (images are read from their URLs whatever the mode, downloaded to
    # the node cache first unless advanced_settings.stream_image_files is true)
    mode: Optional[Literal["ro_mount", "rw_mount", "download", "direct", "eval_mount", "eval_download"]] = None


class Limits(BaseModel):
    """``limits`` (§3.2); ``max_concurrent_trials`` is clamped to ``max_trials`` and the value rewritten."""

    model_config = FORBID
    timeout_minutes: int = Field(10080, ge=1, le=86400)
    max_trials: int = Field(1, ge=1, le=1000)
    max_concurrent_trials: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _clamp(self):
        if self.max_concurrent_trials > self.max_trials:  # (only then: an assignment marks the field as set)
            self.max_concurrent_trials = self.max_trials
        return self


class Sweep(BaseModel):
    """``sweep`` (§3.5)."""

    model_config = FORBID
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

    model_config = FORBID
    apply_mosaic_for_yolo: bool = True
    apply_automl_train_augmentations: bool = True
    stream_image_files: bool = False


class Tracking(BaseModel):
    """``visionsweep.tracking``: MLflow tracking of the sweep (parent run) and its trials (child runs)."""

    model_config = FORBID
    enabled: bool = True
    uri: Optional[str] = Field(None, description="MLflow tracking URI; default sqlite:///RUN/mlflow.db")
    experiment: Optional[str] = Field(None, description="default: experiment_name, else 'visionsweep'")
    register_model: Optional[str] = Field(None, description="register the best model under this name")


class Cache(BaseModel):
    """``visionsweep.cache``: the node-local image cache shared by all trials on a node (SPEC §11.2)."""

    model_config = FORBID
    dir: Optional[str] = Field(None, description="default: $VISIONSWEEP_CACHE_DIR, else $TMPDIR/visionsweep-cache")
    max_size_gb: Optional[float] = Field(None, gt=0, description="default: what the disk there holds (its free space "
                                                                 "and the cache's own bytes, less 2 GiB)")


class Extensions(BaseModel):
    """``visionsweep:``: settings of this implementation that the managed service has no key for."""

    model_config = FORBID
    datastores: dict[str, str] = Field(
        default_factory=dict,
        description="datastore name -> storage URL, used to resolve azureml://.../datastores/<name>/paths/<p> "
                    "and AmlDatastore://<p> (datastore 'default' or 'workspaceblobstore') image URLs",
    )
    data_assets: dict[str, str] = Field(
        default_factory=dict,
        description="'<name>:<version>' -> path or storage URL, used to resolve a data input's path "
                    "azureml:<name>:<version> and azureml:<name>@latest (the highest version)")
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
                                          "save_pretrained folder for Hugging Face models): "
                                          "wins over every other source")
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
    sync_batchnorm: bool = Field(True, description="a data-parallel trial's BatchNorm layers normalise with the "
                                                   "statistics of the whole global batch (SyncBatchNorm); false: "
                                                   "each worker's own part of it")
    cache: Cache = Field(default_factory=Cache)
    data_check: Literal["off", "quick", "standard", "deep"] = Field(
        "quick", description="before the trials, check the data (RUN/data_check.json, one console line, the "
                             "report's 'Data'): quick: exact duplicates and leaks (every image's bytes read once "
                             "on the nodes), balance, boxes; standard: also near copies (perceptual hashes); deep: "
                             "also likely wrong labels (classification); off: no check")
    deploy_top_k: int = Field(3, ge=0, description="after the sweep, measure this many of the best trials as "
                                                   "PyTorch, ONNX and INT8 models (validation metric, latency, "
                                                   "throughput on the driver's CPU): RUN/deployment.json and the "
                                                   "report's 'What to deploy'; 0: not measured")
    deploy_time_share: Optional[float] = Field(0.1, gt=0, description="the figures of the trials after the best "
                                                                       "may take this share of the job's time "
                                                                       "before them (the best trial's are always "
                                                                       "measured); null: no limit")
    max_latency_ms: Optional[float] = Field(None, gt=0, description="a trial whose latency_form takes longer than "
                                                                    "this at batch 1 (p50, ms, on the driver's CPU) "
                                                                    "is marked in the leaderboard and never chosen "
                                                                    "as the best model")
    latency_form: Literal["pytorch", "onnx", "onnx-int8"] = Field(
        "onnx", description="the form max_latency_ms applies to")


class JobSpec(BaseModel):
    """The whole job file (§3.1 and the top-level keys of §14)."""

    model_config = FORBID
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
