"""Reading bytes from a local path or an fsspec URL (``az://``, ``abfs://``, ``s3://``, ``https://`` ...).

Credentials never come from the job file: adlfs and s3fs read them from the environment
(``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME`` + ``AZURE_STORAGE_ACCOUNT_KEY`` /
``AZURE_STORAGE_SAS_TOKEN``, else ``DefaultAzureCredential``; ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` and the rest of the boto3 chain), and
``visionsweep.storage_options.<protocol>`` adds per-protocol keyword arguments.

Every failure is one :class:`~trainers.errors.DataError` that says what to do, never a traceback:

* the backend package is missing: ``az:// URLs need the adlfs package (pip install adlfs)``;
* the credentials are missing or refused: names the store (account and container, or bucket) and the
  environment variables that are read, never a secret value;
* the endpoint cannot be reached (refused, DNS, timeouts) after the retries: names the endpoint host;
* the object does not exist: ``<file>:<line>: image not found: <url>``.

Transient failures (timeouts, resets, HTTP 5xx, 429 / 503 throttling, ``SlowDown``) are retried here with
exponential backoff and jitter (:data:`RETRIES` tries, ``$VISIONSWEEP_STORAGE_RETRIES`` overrides); the
backends' own retry loops are turned down to one try so that this is the only one and its timing is known.

Filesystems are cached per process, protocol, storage options and the cloud's environment variables:
fsspec's own instance cache would keep using credentials the environment no longer has.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import threading
import time
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlparse

from trainers.data.urls import is_remote, protocol
from trainers.errors import DataError, ImageNotFound

StorageOptions = Mapping[str, Mapping[str, Any]]
T = TypeVar("T")

RETRIES = 5  # tries of one storage call (the first included); $VISIONSWEEP_STORAGE_RETRIES overrides
BACKOFF_BASE_S = 0.2  # the wait after the first failure; doubles each time ...
BACKOFF_CAP_S = 5.0  # ... up to this; each wait is drawn from [d/2, d] (jitter)

AZURE_PROTOCOLS = ("az", "abfs", "abfss")
S3_PROTOCOLS = ("s3", "s3a")
# The package a protocol needs (pip name); others are named from the module that failed to import.
PACKAGES = {"az": "adlfs", "abfs": "adlfs", "abfss": "adlfs", "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs",
            "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp", "hf": "huggingface_hub"}
AZURE_ENV_HELP = ("AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY "
                  "or AZURE_STORAGE_SAS_TOKEN, else DefaultAzureCredential (AZURE_CLIENT_ID / AZURE_TENANT_ID / "
                  "AZURE_CLIENT_SECRET, a managed identity or `az login`)")
S3_ENV_HELP = ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), or AWS_PROFILE / "
               "~/.aws/credentials, or the instance role; the endpoint from AWS_ENDPOINT_URL")
_CLOUD_ENV = re.compile(r"^(AZURE_|AWS_)")
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CONNECTION_STRING|SAS|CREDENTIAL", re.IGNORECASE)
_SECRET_FIELD = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|sig|se|sp|sv|skoid|sktid|skt|ske|sks|skv|"
                           r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId|"
                           r"password|client_secret)=([^;&\s'\"]+)")

_CREDENTIAL_CODES = {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
                     "AuthorizationProtocolMismatch", "AuthorizationSourceIPMismatch",
                     "AuthorizationResourceTypeMismatch",
                     "InvalidAuthenticationInfo", "NoAuthenticationInformation", "InsufficientAccountPermissions",
                     "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                     "TokenRefreshRequired", "AuthorizationHeaderMalformed", "AllAccessDisabled",
                     "InvalidClientTokenId", "UnrecognizedClientException"}
_MISSING_CODES = {"BlobNotFound", "NoSuchKey", "NotFound", "404", "ResourceNotFound", "PathNotFound"}
_STORE_MISSING_CODES = {"ContainerNotFound", "NoSuchBucket", "FilesystemNotFound"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "ServerBusy", "ServiceUnavailable", "InternalError", "OperationTimedOut", "RequestTimeout",
                   "RequestTimeTooSkewed", "InternalServerError", "BandwidthLimitExceeded"}
_CREDENTIAL_TYPES = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                     "ClientAuthenticationError", "CredentialUnavailableError", "NoAuthTokenError",
                     "UnauthorizedSSOTokenError", "SSOTokenLoadError", "ProfileNotFound"}
_UNREACHABLE_TYPES = {"EndpointConnectionError", "ConnectTimeoutError", "ServiceRequestError", "ClientConnectorError",
                      "ClientConnectorDNSError", "ConnectionRefusedError", "gaierror", "ConnectError",
                      "NewConnectionError", "ServerTimeoutError", "InvalidURL", "ClientOSError"}
_TRANSIENT_TYPES = {"ReadTimeoutError", "ServiceResponseError", "ConnectionClosedError", "ConnectionResetError",
                    "ConnectionAbortedError", "BrokenPipeError", "TimeoutError", "timeout", "IncompleteRead",
                    "ClientPayloadError", "ServerDisconnectedError", "ResponseParserError", "ResponseStreamingError",
                    "HTTPClientError", "ProtocolError", "IncompleteReadError", "FSTimeoutError"}
RETRIED = ("transient", "unreachable")

_cache: dict[tuple, Any] = {}  # (pid, protocol, options, cloud env hash) -> filesystem
_cache_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------- filesystems

def filesystem(url: str, storage_options: StorageOptions | None = None):
    """``(fs, path)`` for a URL; ``DataError`` when its backend is not installed or the credentials cannot be used."""
    import fsspec

    proto = protocol(url)
    options = dict((storage_options or {}).get(proto, {}))
    if "::" in url:  # chained URLs (simplecache::s3://...): fsspec's own parsing, no cache of ours
        try:
            return fsspec.core.url_to_fs(url, **options)
        except ImportError as e:
            package = _missing_module(e) or "the matching fsspec backend"
            raise DataError(f"{url}: needs the {package} package (pip install {package})") from None
    key = (os.getpid(), proto, _freeze(options), _env_fingerprint())
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        try:
            cls = fsspec.get_filesystem_class(proto)
        except ImportError as e:
            package = PACKAGES.get(proto) or _missing_module(e) or "the matching fsspec backend"
            raise DataError(f"{proto}:// URLs need the {package} package (pip install {package})") from None
        except ValueError:
            raise DataError(f"{url}: unknown storage protocol {proto!r} (no fsspec backend is registered for it)") \
                from None
        try:
            from_url = cls._get_kwargs_from_urls(url)  # e.g. abfs://container@account.dfs.core.windows.net/
            fs = cls(**_with_defaults(proto, {**from_url, **options}), skip_instance_cache=True)
        except ImportError as e:
            package = PACKAGES.get(proto) or _missing_module(e) or "the matching fsspec backend"
            raise DataError(f"{proto}:// URLs need the {package} package (pip install {package})") from None
        except Exception as e:
            raise _to_error(e, url, None, None, storage_options, attempts=1) from None
        _limit_backend_retries(proto, fs)
        with _cache_lock:
            hit = _cache.setdefault(key, fs)
    fs = hit
    return fs, fs._strip_protocol(url)


def clear_cache() -> None:
    """Forget the cached filesystems (tests; a process that rotated credentials in place)."""
    with _cache_lock:
        _cache.clear()


def _with_defaults(proto: str, options: dict) -> dict:
    options = dict(options)
    if proto in S3_PROTOCOLS:
        # botocore's own retries (up to 5 tries with its own backoff) would multiply ours.
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        options["config_kwargs"] = config
    return options


def _limit_backend_retries(proto: str, fs) -> None:
    """One try per call in the backend: retries (and their timing) are ours."""
    if proto in S3_PROTOCOLS and hasattr(fs, "retries"):
        fs.retries = 1  # s3fs' wrapper loop (a class attribute, not a constructor argument)
    elif proto in AZURE_PROTOCOLS:
        # The Azure SDK's default policy waits 15 s, 18 s, 24 s between tries; the policy object is shared by
        # every client made from this service client.
        policy = getattr(getattr(getattr(fs, "service_client", None), "_config", None), "retry_policy", None)
        for attr in ("total_retries", "connect_retries", "read_retries", "status_retries"):
            if isinstance(getattr(policy, attr, None), int):
                setattr(policy, attr, 0)


def _freeze(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple, set)):
        return tuple(_freeze(v) for v in obj)
    try:
        hash(obj)
        return obj
    except TypeError:
        return repr(obj)


def _env_fingerprint() -> str:
    items = sorted((k, v) for k, v in os.environ.items() if _CLOUD_ENV.match(k))
    return hashlib.sha256(repr(items).encode()).hexdigest()


def _missing_module(e: BaseException) -> str | None:
    for x in _chain(e):
        name = getattr(x, "name", None)
        if isinstance(x, ImportError) and name:
            return name.split(".")[0]
    return None


# --------------------------------------------------------------------------------------------------- reading

def open_url(url: str, storage_options: StorageOptions | None = None, mode: str = "rb"):
    """A file object. Remote reads fetch the whole object (with retries) and raise ``FileNotFoundError`` when it
    does not exist (callers name what was missing); other storage failures are ``DataError``."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    if not is_remote(url):
        return open(url, mode)
    if set(mode) & set("wax+"):
        fs, path = filesystem(url, storage_options)
        return call_with_retries(lambda: fs.open(path, mode), url, fs, storage_options)
    data = _fetch(url, storage_options, where=None, missing=lambda: FileNotFoundError(2, "not found", url))
    return io.BytesIO(data) if "b" in mode else io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def is_dir(url: str, storage_options: StorageOptions | None = None) -> bool:
    if is_remote(url):
        fs, path = filesystem(url, storage_options)
        return call_with_retries(lambda: fs.isdir(path), url, fs, storage_options)
    return os.path.isdir(url.removeprefix("file://"))


def read_bytes(url: str, storage_options: StorageOptions | None = None, where: str | None = None) -> bytes:
    """The whole object; ``where`` (its JSONL line) is named in errors."""
    prefix = f"{where}: " if where else ""
    if not is_remote(url):
        try:
            with open(url.removeprefix("file://"), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ImageNotFound(f"{prefix}image not found: {url}") from None
        except OSError as e:
            raise DataError(f"{prefix}cannot read {url}: {e.strerror or e}") from None
    return _fetch(url, storage_options, where, missing=lambda: ImageNotFound(f"{prefix}image not found: {url}"))


def read_head(url: str, n: int, storage_options: StorageOptions | None = None,
              where: str | None = None) -> tuple[bytes, int]:
    """``(the first n bytes, the object's size)``: what an image check needs, without the object's body.

    Remote objects cost two requests: ``info`` (a HEAD, which gives the size) and one ranged GET of ``n`` bytes
    (the whole object when it is no larger). ``ImageNotFound`` (naming ``where``) when the object does not exist.
    """
    prefix = f"{where}: " if where else ""
    if not is_remote(url):
        try:
            with open(url.removeprefix("file://"), "rb") as f:
                return f.read(n), os.fstat(f.fileno()).st_size
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ImageNotFound(f"{prefix}image not found: {url}") from None
        except OSError as e:
            raise DataError(f"{prefix}cannot read {url}: {e.strerror or e}") from None
    fs, path = filesystem(url, storage_options)
    missing = lambda: ImageNotFound(f"{prefix}image not found: {url}")  # noqa: E731
    info = call_with_retries(lambda: fs.info(path), url, fs, storage_options, where=where, missing=missing)
    if info.get("type", "file") != "file":
        raise missing()
    size = int(info.get("size") or 0)
    if size <= n:
        data = call_with_retries(lambda: fs.cat_file(path), url, fs, storage_options, where=where, missing=missing)
        return data, size
    return call_with_retries(lambda: fs.cat_file(path, start=0, end=n), url, fs, storage_options, where=where,
                             missing=missing), size


def write_bytes(url: str, data: bytes, storage_options: StorageOptions | None = None) -> None:
    """Write a whole object (a local file when ``url`` is a path), with the retries of reads."""
    if not is_remote(url):
        with open(url.removeprefix("file://"), "wb") as f:
            f.write(data)
        return
    fs, path = filesystem(url, storage_options)
    call_with_retries(lambda: fs.pipe_file(path, data), url, fs, storage_options)


def check_access(url: str, storage_options: StorageOptions | None = None) -> None:
    """One cheap call (``info`` of the URL) so that missing credentials, refused credentials or an unreachable
    endpoint are one clear ``DataError`` before any work starts; also when ``url`` does not exist."""
    if not is_remote(url):
        if not os.path.exists(url.removeprefix("file://")):
            raise DataError(f"{url} does not exist")
        return
    fs, path = filesystem(url, storage_options)
    try:
        call_with_retries(lambda: fs.info(path), url, fs, storage_options, missing=lambda: FileNotFoundError(url))
    except FileNotFoundError:
        store = path.split("/", 1)[0]
        if store and store != path.rstrip("/") and not call_with_retries(lambda: fs.exists(store), url, fs,
                                                                         storage_options):
            raise DataError(_store_missing_message(url, fs, storage_options)) from None
        raise DataError(f"{url} does not exist") from None


def _fetch(url: str, storage_options, where: str | None, missing: Callable[[], Exception]) -> bytes:
    fs, path = filesystem(url, storage_options)
    return call_with_retries(lambda: fs.cat_file(path), url, fs, storage_options, where=where, missing=missing)


def retries() -> int:
    """Tries per storage call: ``$VISIONSWEEP_STORAGE_RETRIES`` or :data:`RETRIES` (at least 1)."""
    raw = os.environ.get("VISIONSWEEP_STORAGE_RETRIES", "").strip()
    try:
        return max(1, int(raw)) if raw else max(1, RETRIES)
    except ValueError:
        raise DataError(f"$VISIONSWEEP_STORAGE_RETRIES: expected a whole number of tries, but got {raw!r}") from None


def backoff(attempt: int) -> float:
    """Seconds to wait after failed try number ``attempt`` (1-based): exponential, capped, with jitter."""
    d = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return d / 2 + random.uniform(0, d / 2)


def call_with_retries(fn: Callable[[], T], url: str, fs, storage_options, where: str | None = None,
                      missing: Callable[[], Exception] | None = None) -> T:
    """``fn()``, one call on the filesystem ``fs`` (from :func:`filesystem`), with this module's retries and errors.

    Every module that calls a storage backend goes through here (data reads, the weights store and sources), so
    that transient failures (timeouts, resets, 5xx, throttling) are retried with :func:`backoff` up to
    :func:`retries` tries in one place, and every other failure is one ``DataError`` naming ``url`` (prefixed by
    ``where``, e.g. ``file:line: ``), the store and what to do, never a traceback or a credential. ``missing``:
    the exception to raise instead when the object does not exist (else the ``ImageNotFound`` of a read)."""
    tries = retries()
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except DataError:
            raise
        except Exception as e:
            kind = classify(e)
            if kind in RETRIED and attempt < tries:
                time.sleep(backoff(attempt))
                continue
            if kind == "missing" and missing is not None:
                raise missing() from None
            raise _to_error(e, url, fs, where, storage_options, attempts=attempt) from None
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------------------ classification

def _chain(e: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts (breadth first, each once)."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [e]
    while todo and len(out) < 20:
        x = todo.pop(0)
        if x is None or any(x is y for y in out):
            continue
        out.append(x)
        todo += [x.__cause__, x.__context__]
    return out


def _facts(x: BaseException) -> tuple[set[str], set[str], int | None]:
    """(class names in its MRO, error codes, HTTP status) of one exception."""
    names = {c.__name__ for c in type(x).__mro__}
    codes: set[str] = set()
    status = None
    response = getattr(x, "response", None)
    if isinstance(response, Mapping):  # botocore ClientError
        err = response.get("Error") or {}
        if err.get("Code"):
            codes.add(str(err["Code"]))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    code = getattr(x, "error_code", None)  # azure HttpResponseError
    if code:
        codes.add(str(getattr(code, "value", code)))
    sc = getattr(x, "status_code", None)
    if isinstance(sc, int):
        status = status or sc
    elif isinstance(getattr(x, "status", None), int) and "ClientResponseError" in names:  # aiohttp
        status = x.status
    return names, codes, status


def classify(e: BaseException) -> str:
    """``credentials``, ``missing``, ``store_missing``, ``transient``, ``unreachable`` or ``other``."""
    chain = _chain(e)
    facts = [_facts(x) for x in chain]
    codes = set().union(*(c for _, c, _ in facts))
    names = set().union(*(n for n, _, _ in facts))
    statuses = {s for _, _, s in facts if s}
    text = " ".join(str(x) for x in chain[:4])
    if (codes & _CREDENTIAL_CODES or names & _CREDENTIAL_TYPES or statuses & {401, 403}
            or "Must provide either a connection_string or account_name" in text
            or "Connection string is either blank or malformed" in text or "unable to connect to account" in text):
        return "credentials"
    if codes & _STORE_MISSING_CODES:
        return "store_missing"
    if codes & _MISSING_CODES or 404 in statuses or "FileNotFoundError" in names:
        return "missing"
    if codes & _THROTTLE_CODES or any(s == 429 or s >= 500 for s in statuses):
        return "transient"
    if names & _UNREACHABLE_TYPES:
        return "unreachable"
    if names & _TRANSIENT_TYPES:
        return "transient"
    if "ConnectionError" in names or ("OSError" in names and _reason(chain)):
        return "unreachable"
    return "other"


def _reason(chain: list[BaseException]) -> str:
    text = " ".join(f"{type(x).__name__} {x}" for x in chain).lower()
    if "refused" in text or "connect call failed" in text:
        return "connection refused"
    if ("name or service not known" in text or "nodename nor servname" in text or "name resolution" in text
            or "getaddrinfo" in text or "gaierror" in text or "dns" in text):
        return "DNS lookup failed"
    if "timeout" in text or "timed out" in text:
        return "timed out"
    if "reset" in text:
        return "connection reset"
    if "unreachable" in text:
        return "network unreachable"
    return ""


# ------------------------------------------------------------------------------------------------ messages

def _to_error(e: BaseException, url: str, fs, where: str | None, storage_options, attempts: int) -> DataError:
    kind = classify(e)
    prefix = f"{where}: " if where else ""
    proto = protocol(url)
    chain = _chain(e)
    if kind == "credentials":
        return DataError(prefix + _credentials_message(url, fs, storage_options, chain))
    if kind == "store_missing":
        return DataError(prefix + _store_missing_message(url, fs, storage_options))
    if kind == "missing":
        return ImageNotFound(f"{prefix}image not found: {url}")
    host = _endpoint_host(url, fs, storage_options, chain)
    tries = f"after {attempts} {'try' if attempts == 1 else 'tries'}"
    if kind == "unreachable":
        why = _reason(chain) or type(e).__name__
        return DataError(f"{prefix}cannot reach the storage endpoint {host} ({why}) to read {url}, {tries}; check "
                         f"the network and the endpoint{_endpoint_hint(proto)}")
    if kind == "transient":
        return DataError(f"{prefix}the storage service at {host} kept failing for {url} ({_status_text(chain)}) "
                         f"{tries}; try again later, or raise $VISIONSWEEP_STORAGE_RETRIES")
    detail = scrub_secrets(f"{type(e).__name__}: {e}".splitlines()[0][:300], storage_options)
    return DataError(f"{prefix}cannot read {url} ({detail})")


def _credentials_message(url: str, fs, storage_options, chain) -> str:
    proto = protocol(url)
    store = _store_name(url, fs, storage_options)
    codes = set().union(*(_facts(x)[1] for x in chain)) & _CREDENTIAL_CODES
    statuses = {s for _, _, s in (_facts(x) for x in chain) if s in (401, 403)}
    refused = codes or statuses
    if refused:
        what = ", ".join(sorted(codes) or [f"HTTP {s}" for s in sorted(statuses)])
        head = f"{store} refused the credentials ({what}) for {url}"
    else:
        head = f"no usable credentials for {store} to read {url}"
    if proto in AZURE_PROTOCOLS:
        env_help, names = AZURE_ENV_HELP, ("AZURE_STORAGE_", "AZURE_CLIENT_", "AZURE_TENANT_")
    elif proto in S3_PROTOCOLS:
        env_help, names = S3_ENV_HELP, ("AWS_",)
    else:
        env_help, names = "the backend's usual environment variables", ()
    set_now = sorted(k for k in os.environ if k.startswith(names)) if names else []
    now = f" (set now: {', '.join(set_now)})" if set_now else (" (none of them is set)" if names else "")
    return (f"{head}. Credentials are read from {env_help}{now}, or from visionsweep.storage_options.{proto} "
            f"in the job")


def _store_missing_message(url: str, fs, storage_options) -> str:
    return f"{_store_name(url, fs, storage_options)} does not exist (reading {url})"


def _store_name(url: str, fs, storage_options) -> str:
    """``Azure storage account 'a', container 'c'`` / ``S3 bucket 'b' at host``: never a secret."""
    proto = protocol(url)
    store = url.split("://", 1)[1].split("/", 1)[0].split("@", 1)[0]
    if proto in AZURE_PROTOCOLS:
        account = _azure_account(fs, storage_options)
        return f"Azure storage account {account!r}, container {store!r}" if account else \
            f"Azure container {store!r} (no storage account is configured)"
    if proto in S3_PROTOCOLS:
        return f"S3 bucket {store!r} at {_endpoint_host(url, fs, storage_options, [])}"
    return f"{proto}://{store}"


def _azure_account(fs, storage_options) -> str | None:
    account = getattr(fs, "account_name", None)
    if not account:
        client = getattr(fs, "service_client", None)
        account = getattr(client, "account_name", None)
    if not account:
        opts = dict((storage_options or {}).get("az") or (storage_options or {}).get("abfs") or {})
        conn = opts.get("connection_string") or os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or ""
        m = re.search(r"(?i)(?:^|;)\s*AccountName=([^;]+)", conn)
        account = m.group(1) if m else opts.get("account_name") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")
    return account


def _endpoint_host(url: str, fs, storage_options, chain) -> str:
    """``host[:port]`` of the service (never a query string, which may hold a SAS)."""
    for x in chain:
        kw = getattr(x, "kwargs", None)
        if isinstance(kw, Mapping) and kw.get("endpoint_url"):
            return urlparse(str(kw["endpoint_url"])).netloc or str(kw["endpoint_url"])
    proto = protocol(url)
    if proto in AZURE_PROTOCOLS:
        endpoint = getattr(getattr(fs, "service_client", None), "primary_endpoint", None)
        if endpoint and urlparse(str(endpoint)).netloc:
            return urlparse(str(endpoint)).netloc  # no path (Azurite's /account) and no query (a SAS)
        account = _azure_account(fs, storage_options)
        return f"{account}.blob.core.windows.net" if account else "the Azure Blob endpoint"
    if proto in S3_PROTOCOLS:
        endpoint = None
        client = getattr(fs, "_s3", None) or getattr(fs, "s3", None)
        meta = getattr(client, "meta", None)
        endpoint = getattr(meta, "endpoint_url", None)
        if not endpoint:
            opts = dict((storage_options or {}).get(proto) or {})
            endpoint = (opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
                        or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        if endpoint:
            return urlparse(str(endpoint)).netloc or str(endpoint)
        return "s3.amazonaws.com"
    return urlparse(url).netloc or url


def _endpoint_hint(proto: str) -> str:
    if proto in AZURE_PROTOCOLS:
        return " (BlobEndpoint= in AZURE_STORAGE_CONNECTION_STRING, or the storage account name)"
    if proto in S3_PROTOCOLS:
        return " (AWS_ENDPOINT_URL, or endpoint_url in visionsweep.storage_options.s3)"
    return ""


def _status_text(chain) -> str:
    for x in chain:
        names, codes, status = _facts(x)
        if status or codes:
            return " ".join(filter(None, [f"HTTP {status}" if status else "", ", ".join(sorted(codes))]))
    return _reason(chain) or type(chain[0]).__name__


def scrub_secrets(text: str, storage_options=None) -> str:
    """``text`` without credential values: secret-looking environment variables, storage options, URL/connection
    string fields (``AccountKey=``, ``sig=``, ``X-Amz-Signature=`` ...), each replaced by ``***``.

    For any text about a storage location that may reach a log, an error or a file (a URL with a SAS token, a
    backend's exception message): secrets never reach stdout or logs."""
    secrets = [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 4]

    def walk(obj, secret: bool) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, secret or bool(_SECRET_NAME.search(str(k))))
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, secret)
        elif secret and isinstance(obj, str) and len(obj) >= 4:
            secrets.append(obj)

    walk(storage_options or {}, False)
    for s in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(s, "***")
    return _SECRET_FIELD.sub(lambda m: f"{m.group(1)}=***", text)
