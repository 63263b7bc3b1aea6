"""Storage URIs: local paths, ``file://`` and ``s3://`` behind one small API.

Every stage reads and writes through this module, so the same code runs on a laptop (local folders) and on a
cluster (S3 or an S3-compatible store such as SeaweedFS or MinIO) by configuration only.

URIs
    * ``/abs/path``, ``rel/path`` (resolved against the current directory) and ``file:///abs/path`` are local.
    * ``s3://bucket/key`` is S3. The scheme is case-insensitive; nothing else is accepted.

S3 configuration comes **only** from the standard AWS environment and config files, never from code, and botocore
resolves it (the rules of the AWS CLI and boto3; this module parses no config file):
    * endpoint: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else ``endpoint_url`` of the active profile
      (``services`` section or the profile itself); unset means AWS itself. ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``
      disables all of these. s3fs gets the resolved endpoint as well, and pyarrow's ``S3FileSystem``, which does not
      read these settings itself, gets it as ``endpoint_override``.
    * credentials: the default chains of botocore (s3fs) and of the AWS C++ SDK (pyarrow) — ``AWS_ACCESS_KEY_ID`` /
      ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` + shared config files, web identity (IRSA on
      EKS), container and instance metadata. This module never reads secret values except to fingerprint them for the
      per-process cache (a truncated SHA-256 kept in memory), and never logs them.
    * profile: ``AWS_PROFILE``, else ``AWS_DEFAULT_PROFILE``; an unknown profile or an unparsable config file is a
      :class:`StorageError`.
    * region: ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else the profile's ``region``.

Filesystem instances are cached per process (keyed by the pid and the settings above, so a forked worker or a
changed environment gets a fresh client). They are picklable, but the cheaper and more robust pattern inside Ray
tasks/actors is to call :func:`filesystem_for` / :func:`pyarrow_filesystem` there: Ray workers inherit the driver's
environment variables (or the job's ``runtime_env``), so they build identical clients.

Atomicity
    * :func:`write_bytes` — local: temp file in the target directory, fsync, ``os.replace``; S3: one PUT (or one
      multipart upload for > 100 MB), which S3 makes visible atomically. Readers see the old or the new object, never
      a partial one.
    * :func:`write_bytes_if_absent` — create-exclusive, for locks and "first writer wins" markers. Local: a complete
      temp file hard-linked to the target (``link`` fails if the target exists), falling back to ``O_CREAT|O_EXCL``
      where hard links are unsupported. S3: a conditional PUT with ``If-None-Match: *`` (AWS S3 since 2024-08,
      SeaweedFS ≥ 4, MinIO, Ceph RGW); the server answers 412 when the key exists. A server that ignores the header
      would silently overwrite, so a new S3-compatible backend must pass ``tests/test_storage.py`` first.

Errors are :class:`StorageError` subclasses with a one-line ``reason`` and the ``uri``; they also derive from the
matching builtin (``FileNotFoundError``, ``PermissionError``, ``FileExistsError``) so generic handlers keep working.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import posixpath
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # pragma: no cover
    import fsspec
    import pyarrow.fs

__all__ = [
    "StorageError",
    "ObjectNotFoundError",
    "StoragePermissionError",
    "ObjectExistsError",
    "ObjectTooLargeError",
    "StorageUnavailableError",
    "InvalidURIError",
    "S3Settings",
    "s3_settings",
    "is_local",
    "is_s3",
    "local_path",
    "join_uri",
    "parent_uri",
    "basename",
    "filesystem_for",
    "pyarrow_filesystem",
    "clear_filesystem_cache",
    "read_bytes",
    "read_input",
    "within_roots",
    "NotARegularFileError",
    "OutsideRootsError",
    "write_bytes",
    "write_bytes_if_absent",
    "exists",
    "size",
    "list_files",
    "delete",
    "delete_prefix",
    "read_json",
    "write_json",
    "makedirs",
]

# Temp files of atomic local writes: ``.{name}.tmp-{hex}``. list_files() hides them.
_TMP_MARK = ".tmp-"
# Retries for S3 "conditional request conflict" (409) answers to If-None-Match puts.
_CONDITIONAL_CONFLICT_RETRIES = 5


# ----------------------------------------------------------------------------------------------------------------------
# Errors


def _one_line(text: object, limit: int = 300) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class StorageError(OSError):
    """A storage operation failed. ``reason`` is one line; ``uri`` is the object or prefix concerned."""

    def __init__(self, reason: str, uri: str | None = None):
        self.reason = _one_line(reason)
        self.uri = uri
        super().__init__(f"{self.reason}: {uri}" if uri else self.reason)

    def __reduce__(self):  # keep (reason, uri) across pickling (Ray ships exceptions between processes)
        return (type(self), (self.reason, self.uri))

    def __str__(self) -> str:
        return f"{self.reason}: {self.uri}" if self.uri else self.reason


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """The object (or its bucket / parent directory) does not exist."""


class StoragePermissionError(StorageError, PermissionError):
    """Access denied: wrong or missing credentials, or a policy forbids the operation."""


class ObjectExistsError(StorageError, FileExistsError):
    """The object exists where it must not."""


class ObjectTooLargeError(StorageError):
    """The object is larger than the caller's ``max_bytes``."""


class StorageUnavailableError(StorageError):
    """The endpoint could not be reached or timed out (retry later)."""


class InvalidURIError(StorageError, ValueError):
    """The URI is malformed, has an unsupported scheme, or does not name what the operation needs."""


# ----------------------------------------------------------------------------------------------------------------------
# URIs


def _split(uri: str) -> tuple[str, str]:
    """``(scheme, rest)`` with scheme ``"file"`` or ``"s3"``; ``rest`` is a local path or ``bucket/key``."""
    if not isinstance(uri, str) or not uri:
        raise InvalidURIError("empty or non-string URI", repr(uri))
    if "\x00" in uri:
        raise InvalidURIError("URI contains a NUL character", repr(uri))
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        scheme = scheme.lower()
        if scheme == "file":
            if rest.startswith("localhost/"):
                rest = rest[len("localhost") :]
            if not rest.startswith("/"):
                raise InvalidURIError("file:// URIs must be absolute (file:///path)", uri)
            return "file", rest
        if scheme == "s3":
            rest = rest.lstrip("/")
            bucket = rest.split("/", 1)[0]
            if len(bucket) < 3:
                raise InvalidURIError("S3 URI needs a bucket name of 3+ characters (s3://bucket/key)", uri)
            return "s3", rest
        raise InvalidURIError(f"unsupported URI scheme {scheme!r} (use a local path, file:// or s3://)", uri)
    return "file", uri


def is_local(uri: str) -> bool:
    """True for local paths and ``file://`` URIs."""
    return _split(uri)[0] == "file"


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs."""
    return _split(uri)[0] == "s3"


def local_path(uri: str) -> str:
    """The absolute local path of a local URI; :class:`InvalidURIError` for S3."""
    scheme, rest = _split(uri)
    if scheme != "file":
        raise InvalidURIError("not a local URI", uri)
    return os.path.abspath(rest)


def absolute_uri(uri: str) -> str:
    """A relative local path made absolute against this process's working directory; absolute paths, ``file://``
    and ``s3://`` URIs and ``""`` come back unchanged.

    Resolve user-given paths once, in the driver, before they travel to other processes: Ray Train workers change
    into their own working directory (``WorkingDirectorySetupCallback``), so ``runs/x`` would name another folder
    there."""
    if not uri:
        return uri
    scheme, rest = _split(uri)
    if scheme != "file" or uri.startswith("file://") or os.path.isabs(rest):
        return uri
    return os.path.abspath(rest)


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a URI with ``/``, keeping the base's form (path, ``file://`` or ``s3://``).

    Each part may hold several ``/``-separated segments; leading/trailing slashes are ignored and empty segments
    dropped. A ``..`` segment raises :class:`InvalidURIError`: joins build storage keys from (validated) ids, and must
    never climb out of ``base``.
    """
    _split(base)  # validates the base
    segments: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise InvalidURIError(f"URI part must be a string, got {type(part).__name__}", base)
        for seg in part.split("/"):
            if seg in ("", "."):
                continue
            if seg == ".." or "\x00" in seg:
                raise InvalidURIError(f"refusing to join unsafe path segment {seg!r}", base)
            segments.append(seg)
    if not segments:
        return base
    joined = "/".join(segments)
    stem = base.rstrip("/")
    if not stem:  # base "/"
        return "/" + joined
    if stem.endswith(":"):  # base "file:///"
        return stem + "///" + joined
    return stem + "/" + joined


def parent_uri(uri: str) -> str:
    """The URI one level up (``s3://b/a/x.png`` → ``s3://b/a``; ``/d/x.png`` → ``/d``); a bucket root stays put."""
    scheme, rest = _split(uri)
    if scheme == "s3":
        rest = rest.rstrip("/")
        if "/" not in rest:
            return "s3://" + rest
        return "s3://" + rest.rsplit("/", 1)[0]
    prefix = "file://" if uri.lower().startswith("file://") else ""
    path = rest.rstrip("/") or "/"
    parent = posixpath.dirname(path) if "/" in path else ""
    if not parent:
        parent = "."
    return prefix + parent


def basename(uri: str) -> str:
    """The last path segment of a URI."""
    _, rest = _split(uri)
    return rest.rstrip("/").rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------------------------------
# S3 settings and filesystem cache


_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_EC2_METADATA_DISABLED",
)


@dataclass(frozen=True)
class S3Settings:
    """The S3 client settings this process resolves from the AWS environment (no secrets inside)."""

    endpoint_url: str | None
    region: str | None
    profile: str | None
    # Truncated SHA-256 over the credential-bearing environment variables, so the per-process cache builds a new
    # client when they change. Not a secret, not reversible for real keys, never shown in repr.
    credentials_fingerprint: str = field(default="", repr=False)

    @property
    def custom_endpoint(self) -> bool:
        return self.endpoint_url is not None


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _credentials_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in _SECRET_ENV:
        digest.update(name.encode())
        digest.update(b"\x00")
        digest.update((os.environ.get(name) or "").encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:16]


def _resolution_key() -> str:
    """What botocore's answer depends on: the ``AWS_*`` environment and the state of the shared config file (hashed,
    so the cache holds no credential value)."""
    config_file = os.path.expanduser(_env("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        st = os.stat(config_file)
        stamp: tuple | None = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
    return hashlib.sha256(repr((env, config_file, stamp)).encode()).hexdigest()


@functools.lru_cache(maxsize=16)  # two client creations cost ~0.1 s; every read and write asks for the settings
def _botocore_endpoint_and_region(profile: str | None, key: str) -> tuple[str | None, str | None]:
    """``(endpoint_url, or None for AWS itself; region or None)`` as botocore resolves them for an S3 client under
    the environment ``key`` stands for. The endpoint counts as configured when it differs from the one a client gets
    with configured endpoints ignored."""
    import botocore.exceptions
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    try:
        session = botocore.session.Session(profile=profile)
        region = session.get_config_variable("region")
        # Unsigned clients: resolving an endpoint must not run the credential chain (instance metadata, SSO...).
        configured = session.create_client("s3", region_name=region, config=Config(signature_version=UNSIGNED))
        default = session.create_client("s3", region_name=region, config=Config(
            signature_version=UNSIGNED, ignore_configured_endpoint_urls=True))
    except botocore.exceptions.BotoCoreError as exc:  # unknown profile, unparsable config file, missing services
        raise StorageError(f"AWS configuration: {_one_line(exc, 200)}") from None
    endpoint = configured.meta.endpoint_url
    return (None if endpoint == default.meta.endpoint_url else endpoint), region


def s3_settings() -> S3Settings:
    """Endpoint, region and profile of this process's S3 clients, as botocore resolves them (module docstring)."""
    profile = _env("AWS_PROFILE") or _env("AWS_DEFAULT_PROFILE")
    endpoint, region = _botocore_endpoint_and_region(profile, _resolution_key())
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidURIError("S3 endpoint must look like http(s)://host[:port]", endpoint)
    # AWS_REGION first, as the AWS C++ SDK (pyarrow) reads it; botocore itself reads only AWS_DEFAULT_REGION.
    return S3Settings(endpoint, _env("AWS_REGION") or region, profile, _credentials_fingerprint())


_cache_lock = threading.Lock()
_fs_cache: dict[tuple, Any] = {}


def clear_filesystem_cache() -> None:
    """Forget every cached filesystem instance of this process (the next call builds fresh clients)."""
    with _cache_lock:
        _fs_cache.clear()
    _botocore_endpoint_and_region.cache_clear()


def _cached(kind: str, settings: S3Settings | None, build):
    key = (os.getpid(), kind, settings)
    with _cache_lock:
        fs = _fs_cache.get(key)
    if fs is not None:
        return fs
    fs = build()
    with _cache_lock:
        return _fs_cache.setdefault(key, fs)


def _build_s3fs(settings: S3Settings):
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if settings.endpoint_url:
        # region_name stays out for custom endpoints: bucket creation on SeaweedFS/MinIO fails with it.
        client_kwargs["endpoint_url"] = settings.endpoint_url
    elif settings.region:
        client_kwargs["region_name"] = settings.region
    return s3fs.S3FileSystem(
        profile=settings.profile,
        client_kwargs=client_kwargs,
        config_kwargs={"connect_timeout": 10, "read_timeout": 120, "retries": {"max_attempts": 5, "mode": "standard"}},
        # Ours is the per-process cache; s3fs' own instance cache keys only on arguments and would hand back a
        # client built with stale environment credentials.
        skip_instance_cache=True,
        # Listings must not be cached: other workers write concurrently and exists()/list_files() must see them.
        use_listings_cache=False,
    )


def _build_pyarrow_s3(settings: S3Settings):
    import pyarrow.fs as pafs

    kwargs: dict[str, Any] = {
        "connect_timeout": 10,
        "request_timeout": 120,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
    if settings.endpoint_url:
        parts = urlsplit(settings.endpoint_url)
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme
    if settings.region:
        kwargs["region"] = settings.region
    elif settings.endpoint_url:
        kwargs["region"] = "us-east-1"  # S3-compatible stores ignore it; avoids a region lookup
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(uri: str) -> tuple["fsspec.AbstractFileSystem", str]:
    """``(fsspec filesystem, path)`` for a URI: a ``LocalFileSystem`` + absolute path, or an ``S3FileSystem`` +
    ``bucket/key``. The instance is cached per process and settings."""
    scheme, rest = _split(uri)
    if scheme == "file":
        from fsspec.implementations.local import LocalFileSystem

        return _cached("fsspec-local", None, LocalFileSystem), os.path.abspath(rest)
    settings = s3_settings()
    return _cached("fsspec-s3", settings, lambda: _build_s3fs(settings)), rest.rstrip("/")


def pyarrow_filesystem(uri: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """``(pyarrow.fs.FileSystem, path)`` for Ray Data / pyarrow reads and writes, built from the same settings as
    :func:`filesystem_for` (e.g. ``ray.data.read_parquet(path, filesystem=fs)``)."""
    scheme, rest = _split(uri)
    if scheme == "file":
        import pyarrow.fs as pafs

        return _cached("pyarrow-local", None, pafs.LocalFileSystem), os.path.abspath(rest)
    settings = s3_settings()
    return _cached("pyarrow-s3", settings, lambda: _build_pyarrow_s3(settings)), rest.rstrip("/")


# ----------------------------------------------------------------------------------------------------------------------
# Error translation


def _client_error_code(exc: BaseException) -> str | None:
    """The S3 error code (``"PreconditionFailed"``, ``"412"``...) of a botocore ClientError in ``exc``'s chain."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None)
        if isinstance(response, dict):
            err = response.get("Error", {}) or {}
            code = err.get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            return str(code or status or "") or None
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _translate(exc: BaseException, uri: str, op: str) -> StorageError:
    """Map a filesystem / botocore / aiohttp exception to a typed :class:`StorageError` with a one-line reason."""
    if isinstance(exc, StorageError):
        return exc
    try:  # botocore is present whenever s3fs is; guard anyway for local-only installs
        import botocore.exceptions as bex

        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return StoragePermissionError(f"{op}: no usable AWS credentials found (set AWS_ACCESS_KEY_ID/"
                                          "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role)", uri)
        if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError | bex.ReadTimeoutError):
            return StorageUnavailableError(f"{op}: endpoint unreachable ({type(exc).__name__})", uri)
        if isinstance(exc, bex.ProfileNotFound):
            return StorageError(f"{op}: AWS profile not found ({_one_line(exc, 120)})", uri)
    except ImportError:  # pragma: no cover
        pass
    code = _client_error_code(exc) or ""
    if isinstance(exc, FileNotFoundError) or code in ("NoSuchKey", "NoSuchBucket", "404"):
        what = "no such bucket" if "bucket" in str(exc).lower() or code == "NoSuchBucket" else "no such object"
        return ObjectNotFoundError(f"{op}: {what}", uri)
    if isinstance(exc, PermissionError) or code in ("AccessDenied", "403", "InvalidAccessKeyId",
                                                     "SignatureDoesNotMatch"):
        return StoragePermissionError(f"{op}: permission denied ({_one_line(exc, 160) or 'forbidden'})", uri)
    if isinstance(exc, FileExistsError):
        return ObjectExistsError(f"{op}: already exists", uri)
    if isinstance(exc, IsADirectoryError):
        return StorageError(f"{op}: is a directory", uri)
    if isinstance(exc, NotADirectoryError):
        return StorageError(f"{op}: a parent of the path is a file", uri)
    if isinstance(exc, TimeoutError | ConnectionError):
        return StorageUnavailableError(f"{op}: endpoint unreachable ({type(exc).__name__})", uri)
    name = type(exc).__name__
    if "ClientConnector" in name or "ServerDisconnected" in name or "ServerTimeout" in name:
        return StorageUnavailableError(f"{op}: endpoint unreachable ({name})", uri)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return StorageError(f"{op}: no space left on device", uri)
    return StorageError(f"{op} failed: {name}: {_one_line(exc, 200)}", uri)


def _require_key(uri: str, rest: str) -> tuple[str, str]:
    bucket, _, key = rest.partition("/")
    if not key.strip("/"):
        raise InvalidURIError("URI names a bucket, not an object", uri)
    return bucket, key


# ----------------------------------------------------------------------------------------------------------------------
# Reading and writing


def read_bytes(uri: str, max_bytes: int | None = None, *, timeout_s: float | None = None) -> bytes:
    """The whole object. With ``max_bytes``, an object larger than that raises :class:`ObjectTooLargeError`
    without downloading its body (local: ``fstat``; S3: the GET's ``Content-Length``, one request).

    Locally only a regular file is read: the path is opened with ``O_NONBLOCK`` (opening a FIFO without a writer
    then returns at once instead of hanging) and ``fstat`` must say regular file before a byte is read, so FIFOs,
    devices, sockets and directories raise :class:`NotARegularFileError` unread. ``timeout_s`` bounds the read
    (S3: the whole GET; local: checked between 1 MiB chunks, which bounds slow network mounts but cannot interrupt
    one blocked system call) and raises :class:`StorageUnavailableError`."""
    scheme, rest = _split(uri)
    if max_bytes is not None and max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if scheme == "file":
        try:
            data = _local_read_regular(os.path.abspath(rest), uri, max_bytes, deadline)
        except StorageError:
            raise
        except Exception as exc:
            raise _translate(exc, uri, "read") from None
    else:
        _require_key(uri, rest)
        fs, path = filesystem_for(uri)
        try:
            if max_bytes is None and timeout_s is None:
                data = fs.cat_file(path)
            else:
                data = _s3_read_limited(fs, path, uri, max_bytes, timeout_s)
        except StorageError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "FSTimeoutError":
                raise StorageUnavailableError(f"read: timed out after {timeout_s:g} s", uri) from None
            raise _translate(exc, uri, "read") from None
    if max_bytes is not None and len(data) > max_bytes:  # grew between stat and read
        raise ObjectTooLargeError(f"object is over {max_bytes} bytes", uri)
    return data


class NotARegularFileError(StorageError):
    """A local input is a FIFO, device, socket or directory: refused without reading it."""


class OutsideRootsError(StorageError, PermissionError):
    """An input URI points outside the roots a stage may read its inputs from."""


_CHUNK = 1 << 20


def _local_read_regular(path: str, uri: str, max_bytes: int | None, deadline: float | None) -> bytes:
    """Read a local regular file (see :func:`read_bytes`); anything else is refused before a byte is read."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError("read: not a regular file (FIFO, device, socket or directory)", uri)
        if max_bytes is not None and st.st_size > max_bytes:
            raise ObjectTooLargeError(f"object is {st.st_size} bytes, limit is {max_bytes}", uri)
        limit = None if max_bytes is None else max_bytes + 1
        chunks, total = [], 0
        while limit is None or total < limit:
            chunk = os.read(fd, _CHUNK if limit is None else min(_CHUNK, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise StorageUnavailableError("read: timed out", uri)
        return b"".join(chunks)
    finally:
        os.close(fd)


def within_roots(uri: str, roots) -> bool:
    """Whether ``uri`` lies under one of ``roots`` (URIs of folders or bucket prefixes).

    Local paths are compared after resolving symbolic links and ``..`` (``os.path.realpath``), so a link inside a
    root that points outside it is outside; S3 keys are compared as strings (``..`` is no path step in a key).
    A local URI is never under an S3 root and the other way round."""
    scheme, rest = _split(uri)
    for root in roots:
        root_scheme, root_rest = _split(root)
        if root_scheme != scheme:
            continue
        if scheme == "file":
            base = os.path.realpath(root_rest)
            target = os.path.realpath(rest)
            if target == base or target.startswith(base.rstrip(os.sep) + os.sep):
                return True
        else:
            base = root_rest.rstrip("/") + "/"
            if rest.startswith(base):
                return True
    return False


def read_input(uri: str, *, roots, max_bytes: int | None = None, timeout_s: float | None = None) -> bytes:
    """An input a manifest named: :class:`OutsideRootsError` (nothing read, not even a ``stat``) unless ``uri`` is
    under one of ``roots``; then :func:`read_bytes` with its regular-file rule, size limit and timeout."""
    if not within_roots(uri, roots):
        raise OutsideRootsError("read: outside allowed roots", uri)
    return read_bytes(uri, max_bytes=max_bytes, timeout_s=timeout_s)


def _s3_read_limited(fs, path: str, uri: str, max_bytes: int | None, timeout_s: float | None = None) -> bytes:
    from fsspec.asyn import sync

    bucket, key, version = fs.split_path(path)

    async def _get() -> bytes:
        extra = {"VersionId": version} if version else {}
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
        body = resp["Body"]
        try:
            length = resp.get("ContentLength")
            if max_bytes is not None and length is not None and length > max_bytes:
                raise ObjectTooLargeError(f"object is {length} bytes, limit is {max_bytes}", uri)
            return await body.read()
        finally:
            body.close()

    return sync(fs.loop, _get, timeout=timeout_s)  # FSTimeoutError past timeout_s (see read_bytes)


def _local_tmp_path(path: str) -> str:
    d, name = os.path.split(path)
    return os.path.join(d, f".{name}{_TMP_MARK}{uuid.uuid4().hex[:12]}")


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tmp(path: str, data: bytes, fsync: bool) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = _local_tmp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"data must be bytes-like, got {type(data).__name__}")


def write_bytes(uri: str, data: bytes, *, fsync: bool = True) -> None:
    """Write an object atomically, replacing any existing one (local parents are created).

    Local: temp file next to the target, ``fsync`` (skip with ``fsync=False`` for scratch data), ``os.replace``.
    S3: a single PUT (multipart above 100 MB), atomic by S3's semantics.
    """
    data = _as_bytes(data)
    scheme, rest = _split(uri)
    if scheme == "file":
        path = os.path.abspath(rest)
        try:
            tmp = _write_tmp(path, data, fsync)
            try:
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            if fsync:
                _fsync_dir(os.path.dirname(path))
        except Exception as exc:
            raise _translate(exc, uri, "write") from None
        return
    _require_key(uri, rest)
    fs, path = filesystem_for(uri)
    try:
        fs.pipe_file(path, data)
    except Exception as exc:
        raise _translate(exc, uri, "write") from None


def write_bytes_if_absent(uri: str, data: bytes) -> bool:
    """Create the object only if nothing exists at ``uri``. True if this call created it, False if it existed.

    Exactly one of several concurrent callers gets True (local: ``link``/``O_EXCL``; S3: ``If-None-Match: *``, see
    the module docstring). The content is complete when the object becomes visible, except on local filesystems
    without hard links where the ``O_EXCL`` fallback writes in place.
    """
    data = _as_bytes(data)
    scheme, rest = _split(uri)
    if scheme == "file":
        path = os.path.abspath(rest)
        try:
            return _local_create_exclusive(path, data)
        except Exception as exc:
            raise _translate(exc, uri, "create") from None
    _require_key(uri, rest)
    fs, path = filesystem_for(uri)
    for attempt in range(_CONDITIONAL_CONFLICT_RETRIES):
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except Exception as exc:
            code = _client_error_code(exc)
            if code in ("PreconditionFailed", "412"):
                return False
            if code in ("ConditionalRequestConflict", "409"):  # a racing conditional write is in flight
                time.sleep(0.05 * (attempt + 1))
                continue
            raise _translate(exc, uri, "create") from None
    raise StorageError("create: conditional put kept conflicting with concurrent writers", uri)


def _local_create_exclusive(path: str, data: bytes) -> bool:
    tmp = _write_tmp(path, data, fsync=True)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return _local_create_excl_fallback(path, data)
        _fsync_dir(os.path.dirname(path))
        return True
    finally:
        _unlink_quietly(tmp)


def _local_create_excl_fallback(path: str, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def exists(uri: str) -> bool:
    """True if an object, a local directory, or (S3) any object under ``uri/`` exists."""
    scheme, rest = _split(uri)
    if scheme == "file":
        return os.path.exists(os.path.abspath(rest))
    fs, path = filesystem_for(uri)
    try:
        return bool(fs.exists(path))
    except Exception as exc:
        raise _translate(exc, uri, "exists") from None


def size(uri: str) -> int:
    """Size of one object in bytes (:class:`ObjectNotFoundError` if missing)."""
    scheme, rest = _split(uri)
    if scheme == "file":
        try:
            st = os.stat(os.path.abspath(rest))
        except Exception as exc:
            raise _translate(exc, uri, "stat") from None
        if not os.path.isfile(os.path.abspath(rest)):
            raise StorageError("stat: not a file", uri)
        return st.st_size
    _require_key(uri, rest)
    fs, path = filesystem_for(uri)
    try:
        info = fs.info(path)
    except Exception as exc:
        raise _translate(exc, uri, "stat") from None
    if info.get("type") != "file":
        raise StorageError("stat: not an object (a prefix)", uri)
    return int(info.get("size") or 0)


def list_files(prefix: str, suffix: str | None = None) -> list[str]:
    """Every object under the directory ``prefix`` (recursive), as URIs in ``prefix``'s form, sorted.

    ``prefix`` is a directory: ``s3://b/runs/a`` lists ``s3://b/runs/a/...`` and never ``s3://b/runs/ab``. A missing
    prefix lists as empty. ``suffix`` filters by name ending (e.g. ``".parquet"``). Temp files of in-flight atomic
    local writes are hidden.
    """
    scheme, rest = _split(prefix)
    base = prefix.rstrip("/") or "/"
    out: list[str] = []
    if scheme == "file":
        root = os.path.abspath(rest)
        if not os.path.isdir(root):
            return []
        try:
            for dirpath, dirnames, filenames in os.walk(root, onerror=None):
                dirnames.sort()
                rel_dir = os.path.relpath(dirpath, root)
                for name in filenames:
                    if name.startswith(".") and _TMP_MARK in name:
                        continue
                    if suffix and not name.endswith(suffix):
                        continue
                    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                    out.append(join_uri(base, rel))
        except Exception as exc:
            raise _translate(exc, prefix, "list") from None
        return sorted(out)
    fs, path = filesystem_for(prefix)
    root = path.rstrip("/") + "/"
    try:
        keys = fs.find(root, withdirs=False)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise _translate(exc, prefix, "list") from None
    for key in keys:
        if not key.startswith(root) or key.endswith("/"):
            continue
        rel = key[len(root) :]
        if suffix and not rel.endswith(suffix):
            continue
        out.append(base + "/" + rel)
    return sorted(out)


def delete(uri: str, *, missing_ok: bool = True) -> bool:
    """Delete one object. Returns True if something was deleted; a missing object is fine unless
    ``missing_ok=False`` (then :class:`ObjectNotFoundError`). Directories are refused (use :func:`delete_prefix`)."""
    scheme, rest = _split(uri)
    if scheme == "file":
        path = os.path.abspath(rest)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                raise StorageError("delete: is a directory (use delete_prefix)", uri)
            os.unlink(path)
            return True
        except FileNotFoundError:
            if missing_ok:
                return False
            raise ObjectNotFoundError("delete: no such object", uri) from None
        except StorageError:
            raise
        except Exception as exc:
            raise _translate(exc, uri, "delete") from None
    _require_key(uri, rest)
    fs, path = filesystem_for(uri)
    try:
        if not fs.isfile(path):
            if missing_ok:
                return False
            raise ObjectNotFoundError("delete: no such object", uri)
        fs.rm_file(path)
        return True
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(exc, uri, "delete") from None


def delete_prefix(uri: str, *, allow_root: bool = False) -> int:
    """Delete everything under the directory ``uri`` (and, locally, the directory itself); returns the number of
    objects deleted. A bucket root or ``/`` is refused unless ``allow_root=True``."""
    scheme, rest = _split(uri)
    if scheme == "file":
        path = os.path.abspath(rest)
        if path == "/" and not allow_root:
            raise InvalidURIError("refusing to delete the filesystem root", uri)
        if not os.path.exists(path):
            return 0
        import shutil

        count = sum(len(files) for _, _, files in os.walk(path))
        try:
            shutil.rmtree(path)
        except Exception as exc:
            raise _translate(exc, uri, "delete") from None
        return count
    if "/" not in rest.strip("/") and not allow_root:
        raise InvalidURIError("refusing to delete a whole bucket (pass allow_root=True)", uri)
    files = list_files(uri)
    if not files:
        return 0
    fs, _ = filesystem_for(uri)
    paths = [_split(f)[1] for f in files]
    try:
        fs.rm(paths)
    except Exception as exc:
        raise _translate(exc, uri, "delete") from None
    return len(paths)


def read_json(uri: str, max_bytes: int | None = 64 * 2**20) -> Any:
    """Parse a UTF-8 JSON object; malformed JSON raises :class:`StorageError` with the parse position."""
    data = read_bytes(uri, max_bytes=max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"invalid JSON ({_one_line(exc, 160)})", uri) from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become null (strict JSON has no NaN/Infinity); containers are walked."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(uri: str, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as strict UTF-8 JSON (sorted keys, trailing newline) atomically. NaN/±inf are written as
    null; objects JSON cannot represent (paths, numpy scalars, datetimes) are written as ``str(obj)``."""
    text = json.dumps(_json_safe(obj), indent=indent, sort_keys=True, ensure_ascii=False, allow_nan=False,
                      default=_json_default)
    write_bytes(uri, (text + "\n").encode("utf-8"))


def makedirs(uri: str) -> None:
    """Create a local directory and its parents (exist ok); a no-op on S3, which has no directories."""
    scheme, rest = _split(uri)
    if scheme != "file":
        return
    try:
        os.makedirs(os.path.abspath(rest), exist_ok=True)
    except Exception as exc:
        raise _translate(exc, uri, "makedirs") from None
