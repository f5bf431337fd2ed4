"""Remote storage against real servers (Azurite, moto): credentials only from the environment, one clear error
per failure kind, no secret in any message, retries of transient failures (a fault-injecting proxy)."""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE
from tests.storage_servers import Proxy, free_port
from trainers.data import storage
from trainers.data.images import ImageStore
from trainers.data.tables import load_records
from trainers.errors import DataError

PNG = sorted((SAMPLE / "images").glob("*.png"))[:3]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """Short backoff (the retry count is what is tested) and no filesystem cached across tests."""
    monkeypatch.setattr(storage, "BACKOFF_BASE_S", 0.01)
    monkeypatch.delenv("VISIONSWEEP_STORAGE_RETRIES", raising=False)
    storage.clear_cache()
    yield
    storage.clear_cache()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A small MLTable folder: 3 real images and a JSONL naming them relative to itself."""
    d = tmp_path_factory.mktemp("tree")
    (d / "images").mkdir()
    with open(d / "train.jsonl", "w") as f:
        for i, p in enumerate(PNG):
            shutil.copyfile(p, d / "images" / p.name)
            f.write(json.dumps({"image_url": f"images/{p.name}", "label": ["Dress", "Coat", "Bag"][i]}) + "\n")
    (d / "MLTable").write_text("paths:\n  - file: ./train.jsonl\n")
    return d


@pytest.fixture(scope="module")
def az_data(azurite, tree) -> str:
    azurite.create("data")
    return azurite.upload_tree("data", tree, "fm")


@pytest.fixture(scope="module")
def s3_data(moto_s3, tree) -> str:
    moto_s3.create("data")
    return moto_s3.upload_tree("data", tree, "fm")


def assert_no_secret(msg: str, *values: str) -> None:
    for v in values:
        assert v not in msg, "a credential value leaked into the message"


# ----------------------------------------------------------------------------------------- reading, env only

@pytest.mark.parametrize("scheme", ["az", "abfs"])
def test_azurite_reads_with_the_connection_string_from_the_environment(azurite, az_data, scheme):
    name = PNG[0].name
    with azurite.env():
        assert storage.read_bytes(f"{scheme}://data/fm/images/{name}") == PNG[0].read_bytes()
        assert storage.is_dir(f"{scheme}://data/fm")
        storage.check_access(f"{scheme}://data/fm")


def test_a_wasbs_url_with_account_reads_from_azurite(azurite, az_data):
    # the service's wasbs://<container>@<account>.blob.core.windows.net/<path> goes through adlfs as abfs://
    from trainers.data.urls import resolve_url

    url = resolve_url(f"wasbs://data@{azurite.account}.blob.core.windows.net/fm/images/{PNG[0].name}", "/", {}, "x")
    with azurite.env():
        assert storage.read_bytes(url) == PNG[0].read_bytes()


def test_moto_reads_with_keys_and_endpoint_from_the_environment(moto_s3, s3_data):
    with moto_s3.env():
        assert storage.read_bytes(f"{s3_data}/images/{PNG[1].name}") == PNG[1].read_bytes()
        assert storage.is_dir(s3_data)
        storage.check_access(s3_data)


@pytest.mark.parametrize("server", ["azurite", "moto_s3"])
def test_an_mltable_folder_and_its_images_load_from_the_store(request, server, tree):
    srv = request.getfixturevalue(server)
    base = request.getfixturevalue("az_data" if server == "azurite" else "s3_data")
    with srv.env():
        records = load_records(base, "image_classification", "label")
        assert [r.image_url for r in records] == [f"{base}/images/{p.name}" for p in PNG]
        assert records[0].source == f"{base}/train.jsonl:1"
        img = ImageStore().image(records[2].image_url, records[2].source)
        assert img.size == (28, 28)


# ------------------------------------------------------------------------------------------- missing object

@pytest.mark.parametrize("server", ["azurite", "moto_s3"])
def test_a_missing_object_names_the_url_and_the_jsonl_line(request, server):
    srv = request.getfixturevalue(server)
    request.getfixturevalue("az_data" if server == "azurite" else "s3_data")
    url = srv.url("data", "fm/images/nope.png")
    with srv.env(), pytest.raises(DataError) as e:
        storage.read_bytes(url, where="train.jsonl:7")
    assert str(e.value) == f"train.jsonl:7: image not found: {url}"
    with srv.env(), pytest.raises(FileNotFoundError):
        storage.open_url(url)  # callers of open_url (the MLTable / JSONL readers) name what was missing


@pytest.mark.parametrize("server", ["azurite", "moto_s3"])
def test_a_missing_container_or_bucket_is_named(request, server):
    srv = request.getfixturevalue(server)
    with srv.env(), pytest.raises(DataError) as e:
        storage.read_bytes(srv.url("no-such-store", "a.png"), where="train.jsonl:2")
    msg = str(e.value)
    assert "'no-such-store'" in msg and "does not exist" in msg
    assert "not found" not in msg  # a store-wide error, not one bad line (images._probe tells them apart)


# ---------------------------------------------------------------------------------------------- credentials

def test_azurite_refuses_a_wrong_account_key(azurite, az_data):
    wrong = secrets.token_bytes(64)
    import base64

    wrong_key = base64.b64encode(wrong).decode()
    conn = azurite.connection_string_with(wrong_key)
    url = f"az://data/fm/images/{PNG[0].name}"
    for call in (lambda: storage.read_bytes(url, where="t.jsonl:1"), lambda: storage.check_access("az://data/fm")):
        with azurite.env(AZURE_STORAGE_CONNECTION_STRING=conn), pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        assert "account 'devstoreaccount1', container 'data' refused the credentials" in msg
        assert "AZURE_STORAGE_CONNECTION_STRING" in msg and "AZURE_STORAGE_ACCOUNT_KEY" in msg
        assert_no_secret(msg, wrong_key, azurite.account_key, conn)


def test_azure_without_credentials_says_which_variables_are_read(azurite):
    with azurite.env(AZURE_STORAGE_CONNECTION_STRING=None), pytest.raises(DataError) as e:
        storage.read_bytes("az://data/fm/images/a.png")
    msg = str(e.value)
    assert msg.startswith("no usable credentials for Azure container 'data'")
    assert "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME" in msg and "none of them is set" in msg


def test_a_malformed_connection_string_is_not_echoed(azurite):
    bad = f"AccountKey={azurite.account_key};this is not a connection string"
    with azurite.env(AZURE_STORAGE_CONNECTION_STRING=bad), pytest.raises(DataError) as e:
        storage.read_bytes("az://data/fm/images/a.png")
    assert "credentials" in str(e.value)
    assert_no_secret(str(e.value), bad, azurite.account_key)


def test_moto_checks_signatures_and_refuses_a_wrong_secret(moto_s3, s3_data):
    wrong = secrets.token_urlsafe(30)
    url = f"{s3_data}/images/{PNG[0].name}"
    for call in (lambda: storage.read_bytes(url, where="t.jsonl:1"), lambda: storage.check_access(s3_data)):
        with moto_s3.env(AWS_SECRET_ACCESS_KEY=wrong), pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        assert f"S3 bucket 'data' at {moto_s3.endpoint.removeprefix('http://')} refused the credentials" in msg
        assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in msg and "AWS_ENDPOINT_URL" in msg
        assert_no_secret(msg, wrong, moto_s3.env_vars["AWS_SECRET_ACCESS_KEY"])


def test_moto_refuses_an_unknown_access_key(moto_s3, s3_data):
    with moto_s3.env(AWS_ACCESS_KEY_ID="AKIAUNKNOWNUNKNOWN00"), pytest.raises(DataError) as e:
        storage.read_bytes(f"{s3_data}/images/{PNG[0].name}")
    assert "refused the credentials" in str(e.value)
    assert_no_secret(str(e.value), moto_s3.env_vars["AWS_SECRET_ACCESS_KEY"])


def test_s3_without_credentials_says_which_variables_are_read(moto_s3, tmp_path):
    none = str(tmp_path / "none")
    with moto_s3.env(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_EC2_METADATA_DISABLED="true",
                     AWS_SHARED_CREDENTIALS_FILE=none, AWS_CONFIG_FILE=none), pytest.raises(DataError) as e:
        storage.read_bytes("s3://data/fm/images/a.png")
    msg = str(e.value)
    assert msg.startswith("no usable credentials for S3 bucket 'data'") and "AWS_ACCESS_KEY_ID" in msg


# --------------------------------------------------------------------------------------- unreachable, backend

def test_an_unreachable_azure_endpoint_is_named(azurite):
    port = free_port()
    conn = azurite.connection_string.replace(azurite.endpoint, f"http://127.0.0.1:{port}/devstoreaccount1")
    with azurite.env(AZURE_STORAGE_CONNECTION_STRING=conn), pytest.raises(DataError) as e:
        storage.read_bytes("az://data/fm/a.png", where="t.jsonl:3")
    msg = str(e.value)
    assert msg.startswith(f"t.jsonl:3: cannot reach the storage endpoint 127.0.0.1:{port} (connection refused)")
    assert "after 5 tries" in msg
    assert_no_secret(msg, azurite.account_key)


def test_an_unreachable_s3_endpoint_is_named(moto_s3, monkeypatch):
    monkeypatch.setenv("VISIONSWEEP_STORAGE_RETRIES", "2")
    port = free_port()
    with moto_s3.env(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}"), pytest.raises(DataError) as e:
        storage.check_access("s3://data/fm")
    msg = str(e.value)
    assert msg.startswith(f"cannot reach the storage endpoint 127.0.0.1:{port} (connection refused)")
    assert "after 2 tries" in msg and "AWS_ENDPOINT_URL" in msg


def test_a_missing_backend_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "adlfs", None)  # `import adlfs` fails as if it were not installed
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "az", raising=False)
    with pytest.raises(DataError) as e:
        storage.read_bytes("az://data/a.png")
    assert str(e.value) == "az:// URLs need the adlfs package (pip install adlfs)"


# ------------------------------------------------------------------------------------------ fault injection

def test_throttling_is_retried_until_it_succeeds(moto_s3, s3_data):
    url = f"{s3_data}/images/{PNG[2].name}"
    with Proxy(moto_s3.endpoint, fail_first=3) as proxy, moto_s3.env(AWS_ENDPOINT_URL=proxy.url):
        assert storage.read_bytes(url) == PNG[2].read_bytes()
    assert proxy.failed == 3 and proxy.forwarded >= 1


def test_permanent_throttling_names_the_object_after_the_configured_tries(moto_s3, s3_data, monkeypatch):
    monkeypatch.setenv("VISIONSWEEP_STORAGE_RETRIES", "3")
    url = f"{s3_data}/images/{PNG[2].name}"
    with Proxy(moto_s3.endpoint, fail_first=None) as proxy, moto_s3.env(AWS_ENDPOINT_URL=proxy.url):
        with pytest.raises(DataError) as e:
            storage.read_bytes(url, where="t.jsonl:9")
    host = proxy.url.removeprefix("http://")
    msg = str(e.value)
    assert msg.startswith(f"t.jsonl:9: the storage service at {host} kept failing for {url} (HTTP 503")
    assert "after 3 tries" in msg and "VISIONSWEEP_STORAGE_RETRIES" in msg
    assert proxy.failed == 3 and proxy.forwarded == 0  # our retries only: the backend's own are off
    assert_no_secret(msg, moto_s3.env_vars["AWS_SECRET_ACCESS_KEY"])


# ------------------------------------------------------------------------------------------------- pieces

def test_local_paths_and_memory_urls(tmp_path):
    import fsspec

    (tmp_path / "a.bin").write_bytes(b"local")
    fsspec.filesystem("memory").pipe("/vs-test/b.bin", b"mem")
    assert storage.read_bytes(str(tmp_path / "a.bin")) == b"local"
    assert storage.read_bytes(f"file://{tmp_path}/a.bin") == b"local"
    assert storage.read_bytes("memory://vs-test/b.bin") == b"mem"
    with storage.open_url("memory://vs-test/b.bin") as f:
        assert f.read() == b"mem"
    assert storage.is_dir(str(tmp_path)) and storage.is_dir("memory://vs-test")
    assert not storage.is_dir("memory://vs-test/b.bin")
    with pytest.raises(DataError, match=r"^t.jsonl:1: image not found: memory://vs-test/none.png$"):
        storage.read_bytes("memory://vs-test/none.png", where="t.jsonl:1")
    with pytest.raises(DataError, match=r"^image not found: "):
        storage.read_bytes(str(tmp_path / "none.png"))
    with pytest.raises(FileNotFoundError):
        storage.open_url("memory://vs-test/none.png")
    with pytest.raises(DataError, match="unknown storage protocol 'nosuchproto'"):
        storage.read_bytes("nosuchproto://x/y")


def test_backoff_is_exponential_capped_and_jittered(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_BASE_S", 0.2)
    monkeypatch.setattr(storage, "BACKOFF_CAP_S", 5.0)
    for attempt, full in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 5.0), (20, 5.0)]:
        waits = {storage.backoff(attempt) for _ in range(50)}
        assert all(full / 2 <= w <= full for w in waits) and len(waits) > 1


def test_retries_come_from_the_environment(monkeypatch):
    assert storage.retries() == storage.RETRIES
    monkeypatch.setenv("VISIONSWEEP_STORAGE_RETRIES", "2")
    assert storage.retries() == 2
    monkeypatch.setenv("VISIONSWEEP_STORAGE_RETRIES", "lots")
    with pytest.raises(DataError, match="VISIONSWEEP_STORAGE_RETRIES"):
        storage.retries()


def test_scrub_removes_credential_values(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    text = "x AccountKey=abc/def==;BlobEndpoint=h sig=XYZ&se=1 s3cr3t-value opt-secret"
    out = storage.scrub_secrets(text, {"az": {"account_key": "opt-secret", "account_name": "acct"}})
    for v in ("abc/def==", "XYZ", "s3cr3t-value", "opt-secret"):
        assert v not in out
    assert "BlobEndpoint=h" in out
