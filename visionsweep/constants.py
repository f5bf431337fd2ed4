"""The service SDK's constants a notebook imports (``from azure.ai.ml.constants import AssetTypes``), by the same
names and values, so the import line is the only change."""

from __future__ import annotations


class AssetTypes:
    """What a data or model input is. Training and validation data take ``MLTABLE`` (an MLTable folder or file,
    the service's format), ``URI_FILE`` (a JSONL file) or ``URI_FOLDER``; the model types name a deployment's model."""

    MLTABLE = "mltable"
    URI_FILE = "uri_file"
    URI_FOLDER = "uri_folder"
    MLFLOW_MODEL = "mlflow_model"
    CUSTOM_MODEL = "custom_model"
    TRITON_MODEL = "triton_model"


class InputOutputModes:
    """How the service hands an input to a trial. visionsweep reads images from their URLs either way; whether they
    are downloaded to the node cache first or streamed is ``advanced_settings.stream_image_files`` (§11.2)."""

    RO_MOUNT = "ro_mount"
    RW_MOUNT = "rw_mount"
    DOWNLOAD = "download"
    UPLOAD = "upload"
    DIRECT = "direct"
    EVAL_MOUNT = "eval_mount"
    EVAL_DOWNLOAD = "eval_download"
