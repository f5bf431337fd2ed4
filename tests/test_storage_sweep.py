"""Sweeps whose images and JSONL live on Azure Blob (Azurite) or S3 (moto), credentials only from the environment.

Each job trains with ``stream_image_files`` on and off (SPEC §11.2): off, the node cache holds every image
before training; on, images stream and the cache keeps what fits. No credential may reach the run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.controller import run_job
from tests.conftest import small_sample
from tests.test_sweep import make_job
from trainers.data.cache import NodeCache

pytestmark = pytest.mark.ray


def _secrets(server) -> list[str]:
    out = []
    for k, v in server.env_vars.items():
        if "KEY" in k or "SECRET" in k or "CONNECTION" in k:
            out.append(v)
            out += [p.split("=", 1)[1] for p in v.split(";") if p.startswith("AccountKey=")]
    return [s for s in out if s]


def _assert_no_secret(run_dir: Path, text: str, secrets: list[str]) -> None:
    for f in run_dir.rglob("*"):
        if f.is_file() and f.stat().st_size < 5_000_000:
            data = f.read_bytes()
            for s in secrets:
                assert s.encode() not in data, f"a credential was written to {f}"
    for s in secrets:
        assert s not in text, "a credential was printed"


@pytest.fixture(params=["azurite", "moto_s3"])
def store(request, small_mltable):
    server = request.getfixturevalue(request.param)
    bucket = f"data-{request.param.replace('_', '-')}"
    server.create(bucket)
    url = server.upload_tree(bucket, small_mltable, "small")
    return server, url


@pytest.mark.parametrize("stream", [False, True])
def test_sweep_on_blob_storage(ray_session, store, tmp_path, stream):
    server, url = store
    cache = tmp_path / "cache"
    job = make_job(Path("/unused"), f"""\
visionsweep:
  tracking: {{enabled: false}}
  cache: {{dir: {cache}, max_size_gb: 0.0005}}
""", epochs=1)
    # the data named as a registered data asset, as the service's jobs do: its latest version is the store's URL
    job.spec.training_data.path = "azureml:small-set@latest"
    job.spec.visionsweep.data_assets = {"small-set:1": "/no/such/folder", "small-set:2": url}
    job.training_parameters["model_name"] = "resnet18"
    job.advanced.stream_image_files = stream
    lines: list[str] = []
    with server.env():
        result = run_job(job, tmp_path / "run", echo=lines.append)

    assert [r["status"] for r in result.rows] == ["completed"]
    assert (result.run_dir / "best" / "model.safetensors").is_file()
    # the split names the images where they live, not a local copy
    first = json.loads((result.run_dir / "data" / "train.jsonl").read_text().splitlines()[0])
    assert first["image_url"].startswith(url.split("://")[0] + "://")
    # the node cache holds every image (90 small PNGs fit in 0.5 MiB) when they are downloaded first, what the
    # trial read when they stream (the last partial training batch is dropped), never more than its limit
    c = NodeCache.open(str(cache), int(0.0005 * 2**30))
    assert c.stats()["files"] == 90 if not stream else 60 < c.stats()["files"] < 90
    assert c.size_bytes() <= int(0.0005 * 2**30)
    assert any(("streamed" if stream else "downloaded to the node cache first") in ln for ln in lines)
    _assert_no_secret(result.run_dir, "\n".join(lines), _secrets(server))


def test_streaming_cache_never_exceeds_its_limit_under_two_concurrent_trials(ray_session, azurite, tmp_path):
    # 36 images: every read misses (the cache holds a third of them), and each miss is an Azurite round trip
    small = small_sample(tmp_path / "small", per_class=12)
    azurite.create("tight")
    url = azurite.upload_tree("tight", small, "small")
    cache = tmp_path / "cache"
    total = sum(p.stat().st_size for p in (small / "images").iterdir())
    limit_gb = total / 3 / 2**30  # a third of the images: the two trials keep evicting each other's files
    job = make_job(Path("/unused"), f"""\
limits: {{max_trials: 2, max_concurrent_trials: 2}}
search_space:
  - learning_rate: {{type: choice, values: [0.001, 0.01]}}
sweep: {{sampling_algorithm: grid}}
training_parameters:
  advanced_settings: '{{"stream_image_files": true}}'
visionsweep:
  tracking: {{enabled: false}}
  cache: {{dir: {cache}, max_size_gb: {limit_gb}}}
""", epochs=1)  # one epoch streams every image through the cache: evictions all the way
    job.spec.training_data.path = url
    job.training_parameters["model_name"] = "resnet18"
    with azurite.env():
        result = run_job(job, tmp_path / "run", echo=lambda s: None)
    assert [r["status"] for r in result.rows] == ["completed", "completed"]
    c = NodeCache.open(str(cache), int(limit_gb * 2**30))
    assert 0 < c.size_bytes() <= int(limit_gb * 2**30)
    assert c.stats()["files"] < 36


def test_managed_service_datastore_urls_with_credentials_from_the_environment(azurite, small_mltable, tmp_path):
    """The managed service's own JSONL (azureml://.../datastores/<name>/paths/...) and job file, unchanged."""
    azurite.create("workspace")
    azurite.upload_tree("workspace", small_mltable / "images", "UI/fashion/images")
    base = "azureml://subscriptions/0000/resourcegroups/rg/workspaces/ws/datastores/workspaceblobstore/paths/"
    table = tmp_path / "data"
    table.mkdir()
    with open(table / "train.jsonl", "w") as f:
        for line in (small_mltable / "train_annotations.jsonl").read_text().splitlines():
            rec = json.loads(line)
            rec["image_url"] = base + "UI/fashion/" + rec["image_url"]
            f.write(json.dumps(rec) + "\n")
    (table / "MLTable").write_text((small_mltable / "MLTable").read_text().replace("train_annotations.jsonl",
                                                                                   "train.jsonl"))
    datastores = tmp_path / "datastores.yml"
    datastores.write_text("workspaceblobstore: az://workspace\n")
    job = tmp_path / "job.yml"
    job.write_text(make_job(table, "visionsweep:\n  tracking: {enabled: false}\n"
                                   f"  cache: {{dir: {tmp_path / 'cache'}}}\n", epochs=1).text
                   .replace("training_parameters:\n", "training_parameters:\n  model_name: resnet18\n"))
    with azurite.env():
        proc = subprocess.run([sys.executable, "-m", "visionsweep.cli", "run", str(job), "--output",
                               str(tmp_path / "run"), "--datastores", str(datastores)],
                              capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_trial"] and summary["trials"] == 1
    first = json.loads((tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()[0])
    assert first["image_url"].startswith("az://workspace/UI/fashion/images/")
    _assert_no_secret(tmp_path / "run", proc.stdout + proc.stderr, _secrets(azurite))
