"""A job's data, prepared once before any trial starts (SPEC §2.7, §2.8, §8.6, §11.2)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from trainers import hyperparameters as hp
from trainers.data.images import ImageStore, check_images, human_size
from trainers.data.tables import Record, class_list, label_counts, load_records, split_records
from trainers.data.urls import is_remote
from trainers.errors import DataError

log = logging.getLogger(__name__)

MIN_TRAINING_IMAGES = 10  # §2.8: hard minimum to submit a job
FEW_SAMPLES_WARNING = 10  # §2.8: warn (not fail) below this many samples per label


@dataclass
class PreparedData:
    """What every trial needs to build its datasets: records, class names and how to read the images."""

    task: str
    classes: list[str]
    train: list[Record]
    valid: list[Record]
    store: ImageStore = field(default_factory=ImageStore)
    warnings: list[str] = field(default_factory=list)
    image_bytes: int = 0  # total size of the job's images
    remote_bytes: int = 0  # ... of those on remote storage (what the non-streaming mode downloads to each node)

    @property
    def storage_options(self) -> dict[str, dict[str, Any]]:
        return self.store.storage_options


def prepare_data(task: str, target_column: str, training_path: str, validation_path: str | None,
                 validation_fraction: float, seed: int, datastores: Mapping[str, str] | None = None,
                 storage_options=None, bad_images: str = "error", store: ImageStore | None = None) -> PreparedData:
    """Load, validate and split a job's data once; read every image once, filling this node's cache."""
    store = store or ImageStore(dict(storage_options or {}))
    storage_options = store.storage_options
    warnings: list[str] = []
    train = load_records(training_path, task, target_column, datastores, storage_options, warnings)
    if len(train) < MIN_TRAINING_IMAGES:
        raise DataError(f"{training_path}: training data has {len(train)} image(s); at least "
                        f"{MIN_TRAINING_IMAGES} are required")
    if validation_path:
        valid = load_records(validation_path, task, target_column, datastores, storage_options, warnings)
        if not valid:
            raise DataError(f"{validation_path}: validation data has no lines")
    else:
        train, valid = split_records(train, validation_fraction, seed)
    sizes: dict[str, int] = {}
    train = check_images(train, store, bad_images, warnings, sizes=sizes, what="training image")
    valid = check_images(valid, store, bad_images, warnings, sizes=sizes, what="validation image")
    if len(train) + len(valid) < MIN_TRAINING_IMAGES or not train or not valid:
        raise DataError(f"too few readable images left ({len(train)} train, {len(valid)} validation)")
    remote_bytes = sum(n for u, n in sizes.items() if is_remote(u))
    if remote_bytes and not store.stream and store.cache_dir and store.cache_max_bytes is not None \
            and remote_bytes > store.cache_max_bytes:  # a limit the job set: said now; the disk's, by each node
        raise DataError(f"the job's images take {human_size(remote_bytes)}, more than the node cache holds "
                        f"({human_size(store.cache_max_bytes)} at {store.cache_dir}): they cannot all be downloaded "
                        "before training (§11.2). Raise visionsweep.cache.max_size_gb, or set "
                        "advanced_settings {\"stream_image_files\": true} to stream them")
    classes = class_list(task, train, valid)
    if task == hp.MULTICLASS and len(classes) < 2:
        raise DataError(f"{training_path}: multi-class classification needs at least 2 classes, "
                        f"but the data has {classes}")
    unseen = sorted(set(class_list(task, valid)) - set(class_list(task, train)))
    if unseen:
        warnings.append(f"validation labels never seen in training: {', '.join(unseen)}")
    few = sorted(c for c, n in label_counts(task, train).items() if n < FEW_SAMPLES_WARNING)
    if few:
        warnings.append(f"labels with fewer than {FEW_SAMPLES_WARNING} training samples "
                        f"(10-15 per label recommended): {', '.join(few)}")
    for w in warnings:  # the caller shows them (the controller prints each once): here for debugging only
        log.debug(w)
    return PreparedData(task, classes, train, valid, store, warnings, sum(sizes.values()), remote_bytes)
