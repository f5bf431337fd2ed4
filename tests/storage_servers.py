"""Real local storage servers for tests: Azurite (Azure Blob) and moto (S3), one of each per test session.

Each server runs as a subprocess on a free port of 127.0.0.1, is polled until it answers (a bounded number
of tries; the wait between tries ends early when the process dies) and is stopped by its PID at the end.
A fixture yields a :class:`StorageServer`:

* ``endpoint``: the server's base URL; ``pid``; ``log``: the file holding its output;
* ``env_vars``: what a user would export so that ``az://`` / ``s3://`` URLs work with no storage_options;
* ``env(**overrides)``: a context manager that sets ``env_vars`` (plus overrides; ``None`` unsets) in
  ``os.environ`` and unsets the other variables of the same cloud that could interfere;
* ``create(store)``: a container (Azurite) or bucket (moto); ``upload_tree(store, folder, prefix)``:
  uploads a local folder tree and returns the fsspec URL of ``prefix``; ``url(store, key)``.

Scripts (``bench/``) start the same servers without pytest through the context managers
``azurite_server(work_dir)`` and ``moto_s3_server(work_dir)``, which the fixtures use too.

Azurite comes from npm (``make setup`` installs it into ``.test-tools/``); moto_server from the test extra.
moto checks request signatures: the fixture creates an IAM user with an access key and an S3 policy, then
turns authentication on, so a wrong secret gets ``SignatureDoesNotMatch`` as from AWS.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / ".test-tools" / "node_modules" / ".bin" / "azurite-blob"
START_TRIES = 300  # x up to 0.1 s each: a server gets about 30 s to answer
AZURITE_ACCOUNT = "devstoreaccount1"
# The emulator's documented public development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# Variables of each cloud that the fixtures' env() unsets before setting their own (a developer's real
# credentials or profile must not leak into the tests, nor be sent to a local server).
AZURE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
              "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CLIENT_ID", "AZURE_STORAGE_CLIENT_SECRET",
              "AZURE_STORAGE_TENANT_ID", "AZURE_STORAGE_ANON")
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    """True once the server answers HTTP at all (any status: 403 from Azurite means it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _start(name: str, cmd: list[str], probe_url: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    for _ in range(START_TRIES):
        if _answers(probe_url):
            return proc
        try:
            proc.wait(timeout=0.1)  # the pause between tries; returns at once if the server died
        except subprocess.TimeoutExpired:
            continue
        break
    _stop(proc)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{name} did not answer on {probe_url} (exit code {proc.returncode}); its output:\n{tail}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class StorageServer:
    name: str
    scheme: str  # the fsspec protocol of its URLs: "az" or "s3"
    endpoint: str
    pid: int
    log: Path
    env_vars: dict[str, str]
    _cloud_vars: tuple[str, ...] = field(default=(), repr=False)

    @contextlib.contextmanager
    def env(self, **overrides: str | None) -> Iterator[dict[str, str]]:
        """Set this server's variables (and ``overrides``; ``None`` unsets one) in ``os.environ`` for the block."""
        wanted = {k: None for k in self._cloud_vars}
        wanted.update(self.env_vars)
        wanted.update(overrides)
        saved = {k: os.environ.get(k) for k in wanted}
        try:
            for k, v in wanted.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            yield {k: v for k, v in wanted.items() if v is not None}
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def url(self, store: str, key: str = "") -> str:
        return f"{self.scheme}://{store}/{key.lstrip('/')}"

    def upload_tree(self, store: str, folder: str | Path, prefix: str = "") -> str:
        """Upload every file under ``folder`` to ``store``/``prefix``/<relative path>; the URL of the prefix."""
        folder = Path(folder)
        prefix = prefix.strip("/")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix, path.relative_to(folder).as_posix()]))
            self.put(store, key, path.read_bytes())
        return self.url(store, prefix)

    def create(self, store: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def put(self, store: str, key: str, data: bytes) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class AzuriteServer(StorageServer):
    account: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY

    @property
    def connection_string(self) -> str:
        return self.env_vars["AZURE_STORAGE_CONNECTION_STRING"]

    def connection_string_with(self, account_key: str) -> str:
        """The same connection string with another account key (for wrong-credential tests)."""
        return self.connection_string.replace(self.account_key, account_key)

    def _service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create(self, store: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._service().create_container(store)

    def put(self, store: str, key: str, data: bytes) -> None:
        self._service().get_blob_client(store, key).upload_blob(data, overwrite=True)


@dataclass
class MotoS3Server(StorageServer):
    region: str = "us-east-1"

    def client(self, **kwargs):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.env_vars["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env_vars["AWS_SECRET_ACCESS_KEY"], **kwargs)

    def create(self, store: str) -> None:
        s3 = self.client()
        try:
            s3.create_bucket(Bucket=store)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass

    def put(self, store: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=store, Key=key, Body=data)


def azurite_installed() -> bool:
    return AZURITE_BIN.exists() and shutil.which("node") is not None


@contextlib.contextmanager
def azurite_server(work: Path) -> Iterator[AzuriteServer]:
    """Start Azurite on a free port with its data and log under ``work``; stop it (by PID) at the end.

    For scripts (``bench/``) as well as the fixture; raises ``RuntimeError`` when it does not come up."""
    if not azurite_installed():
        raise RuntimeError(f"Azurite is not installed ({AZURITE_BIN}): run `make setup`")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    cmd = [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(work / "data"),
           "--skipApiVersionCheck", "--loose", "--disableTelemetry"]
    proc = _start("Azurite", cmd, f"{endpoint}?comp=list", work / "azurite.log")
    conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint};")
    try:
        yield AzuriteServer(name="azurite", scheme="az", endpoint=endpoint, pid=proc.pid, log=work / "azurite.log",
                            env_vars={"AZURE_STORAGE_CONNECTION_STRING": conn}, _cloud_vars=AZURE_VARS)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory) -> Iterator[AzuriteServer]:
    """A real Azurite blob service for this test session (``make setup`` installs it)."""
    if not azurite_installed():
        msg = f"Azurite is not installed ({AZURITE_BIN}): run `make setup`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    with azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


def _enable_moto_auth(endpoint: str, region: str) -> tuple[str, str]:
    """Create an IAM user allowed s3:* with an access key, then make moto check every request's signature."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=region, aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    iam.create_user(UserName="visionsweep-tests")
    iam.put_user_policy(UserName="visionsweep-tests", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="visionsweep-tests")["AccessKey"]
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})  # form-encoded would hide the body
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
    return key["AccessKeyId"], key["SecretAccessKey"]


def moto_server_exe() -> str | None:
    exe = Path(sys.executable).parent / "moto_server"
    return str(exe) if exe.exists() else shutil.which("moto_server")


@contextlib.contextmanager
def moto_s3_server(work: Path) -> Iterator[MotoS3Server]:
    """Start moto_server (signature checks on) on a free port, its log under ``work``; stop it (by PID) at the end.

    For scripts (``bench/``) as well as the fixture; raises ``RuntimeError`` when it is missing or does not
    come up."""
    exe = moto_server_exe()
    if exe is None:
        raise RuntimeError("moto_server is not installed: pip install -e '.[test]' (moto[server])")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    proc = _start("moto_server", [exe, "-H", "127.0.0.1", "-p", str(port)], f"{endpoint}/moto-api/",
                  work / "moto.log", env=env)
    try:
        region = "us-east-1"
        key_id, secret = _enable_moto_auth(endpoint, region)
        yield MotoS3Server(name="moto", scheme="s3", endpoint=endpoint, pid=proc.pid, log=work / "moto.log",
                           env_vars={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret,
                                     "AWS_DEFAULT_REGION": region, "AWS_ENDPOINT_URL": endpoint},
                           _cloud_vars=AWS_VARS, region=region)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory) -> Iterator[MotoS3Server]:
    """A real moto S3 server (``moto_server``) that checks signatures, for this test session."""
    if moto_server_exe() is None:
        pytest.fail("moto_server is not installed: pip install -e '.[test]' (moto[server])")
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of ``target`` that counts what passes (requests per method, bytes of
    the response bodies) and answers the first ``fail_first`` requests (all when None) with 503 SlowDown, as S3
    does when throttling, forwarding the others unchanged. Tests and benches measure storage traffic with it."""

    BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")

    def __init__(self, target: str, fail_first: int | None = 0):
        self.target = target.removeprefix("http://")
        self.fail_first = fail_first
        self.failed = 0
        self.forwarded = 0
        self.requests: dict[str, int] = {}  # forwarded requests per method
        self.bytes_out = 0  # bytes of the forwarded responses' bodies
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def handle_any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:
                    fail = proxy.fail_first is None or proxy.failed < proxy.fail_first
                    if fail:
                        proxy.failed += 1
                    else:
                        proxy.forwarded += 1
                        proxy.requests[self.command] = proxy.requests.get(self.command, 0) + 1
                if fail:
                    self.send_response_only(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(Proxy.BODY)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(Proxy.BODY)
                    return
                conn = http.client.HTTPConnection(proxy.target, timeout=30)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():  # Host included: the signature covers it
                        conn.putheader(k, v)
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()
                    with proxy.lock:
                        proxy.bytes_out += len(data)
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # listening once constructed
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reset(self) -> None:
        with self.lock:
            self.requests, self.bytes_out, self.forwarded = {}, 0, 0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()  # returns once serve_forever has stopped
        self.server.server_close()
        self.thread.join()
