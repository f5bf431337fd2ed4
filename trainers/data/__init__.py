"""Datasets: tables, URLs, storage, the node cache, images and torch datasets (SPEC §2, §11.2).

One concept per module:

* :mod:`~trainers.data.urls`: local paths, fsspec URLs, datastore URIs (``azureml://``, ``AmlDatastore://``);
* :mod:`~trainers.data.storage`: bytes from storage, with retries and one clear error per failure kind;
* :mod:`~trainers.data.cache`: the node-local, size-bounded image cache shared by all trials on a node;
* :mod:`~trainers.data.images`: decoding, the per-job :class:`ImageStore`, the pre-sweep image check;
* :mod:`~trainers.data.tables`: MLTable / JSONL -> validated :class:`Record` s;
* :mod:`~trainers.data.prepare`: a job's data, prepared once before the sweep;
* :mod:`~trainers.data.datasets`: torch datasets.
"""

from trainers.data.images import ImageStore, check_images, decode_image, read_image
from trainers.data.prepare import MIN_TRAINING_IMAGES, PreparedData, prepare_data
from trainers.data.tables import Record, class_list, label_counts, load_records, split_records, table_files
from trainers.data.urls import load_data_assets, load_datastores, resolve_data_asset, resolve_url

__all__ = ["ImageStore", "MIN_TRAINING_IMAGES", "PreparedData", "Record", "check_images", "class_list",
           "decode_image", "label_counts", "load_data_assets", "load_datastores", "load_records", "prepare_data",
           "read_image", "resolve_data_asset", "resolve_url", "split_records", "table_files"]
