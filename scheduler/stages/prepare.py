"""Stage 2, prepare: the job's data (datastores and data assets resolved, the train/validation split, images checked
as the job says) and RUN/data/ (the split as JSONL, classes, counts, warnings)."""

from __future__ import annotations

import json
from pathlib import Path

from scheduler.spec import Job
from scheduler.stages.context import RunContext
from trainers.data import (
    ImageStore,
    PreparedData,
    load_data_assets,
    load_datastores,
    prepare_data,
    resolve_data_asset,
    resolve_url,
)
from trainers.data.images import default_cache_dir
from trainers.labels import label_json


def prepare(ctx: RunContext, datastores_file: str | None = None, data_assets_file: str | None = None) -> PreparedData:
    with ctx.phase("data"):
        data = prepare_job_data(ctx.job, ctx.run_dir, datastores_file, data_assets_file)
    ctx.store.push()
    ctx.echo(f"data: {len(data.train)} training / {len(data.valid)} validation images, {len(data.classes)} classes")
    for w in data.warnings:
        ctx.echo(f"warning: {w}")
    return data


def image_store(job: Job) -> ImageStore:
    """How trials read images: storage options, the node cache (§11.2) and whether images stream."""
    ext = job.spec.visionsweep
    cache_dir = ext.cache.dir or default_cache_dir()
    # no limit set: each node sizes its cache to its own disk (trainers.data.images.disk_budget)
    max_bytes = int(ext.cache.max_size_gb * 2**30) if ext.cache.max_size_gb is not None else None
    return ImageStore(storage_options=dict(ext.storage_options), cache_dir=cache_dir, cache_max_bytes=max_bytes,
                      stream=job.advanced.stream_image_files, bad_images=ext.bad_images)


def prepare_job_data(job: Job, run_dir: Path, datastores_file: str | None = None,
                     data_assets_file: str | None = None) -> PreparedData:
    spec, ext = job.spec, job.spec.visionsweep
    datastores = load_datastores(ext.datastores, datastores_file)
    assets = load_data_assets(ext.data_assets, data_assets_file)
    base = str(job.base_dir)

    def data_path(path: str, where: str) -> str:
        return resolve_url(resolve_data_asset(path, assets, where), base, datastores, where)

    train_path = data_path(spec.training_data.path, "training_data.path")
    valid_path = data_path(spec.validation_data.path, "validation_data.path") if spec.validation_data else None
    data = prepare_data(spec.task, spec.target_column_name, train_path, valid_path, job.validation_fraction,
                        ext.seed, datastores, bad_images=ext.bad_images, store=image_store(job))
    d = run_dir / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name, recs in (("train", data.train), ("valid", data.valid)):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in recs:
                label = label_json(r.label)
                f.write(json.dumps({"image_url": r.image_url, "label": label, "source": r.source}) + "\n")
    summary = {"classes": data.classes, "train_images": len(data.train), "validation_images": len(data.valid),
               "warnings": data.warnings}
    (d / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return data
