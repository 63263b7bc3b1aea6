"""pipelines.core.storage on local folders and on a real S3 server (SeaweedFS from tests/fixtures/s3.py)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.core import storage

REPO = Path(__file__).resolve().parents[1]


def _roots(kind: str, tmp_path: Path, request) -> str:
    if kind == "local":
        return str(tmp_path / "root")
    if kind == "file":
        return "file://" + str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/root"


BACKENDS = ["local", "file", pytest.param("s3", marks=pytest.mark.integration)]


# ----------------------------------------------------------------------------------------------------------------------
# URIs


def test_join_and_parent_keep_the_form():
    assert storage.join_uri("s3://bkt/a/", "b", "c/d.png") == "s3://bkt/a/b/c/d.png"
    assert storage.join_uri("/data", "x.png") == "/data/x.png"
    assert storage.join_uri("file:///data/", "x") == "file:///data/x"
    assert storage.join_uri("/", "x") == "/x"
    assert storage.join_uri("s3://bkt", "") == "s3://bkt"
    assert storage.parent_uri("s3://bkt/a/b.png") == "s3://bkt/a"
    assert storage.parent_uri("/d/e/f.parquet") == "/d/e"
    assert storage.basename("s3://bkt/a/b.png") == "b.png"
    assert storage.is_local("rel/path") and storage.is_local("file:///x") and not storage.is_local("s3://bkt/x")


@pytest.mark.parametrize("bad", ["gs://bkt/x", "", "s3://ab/x", "file://relative", "/a\x00b"])
def test_invalid_uris_are_typed(bad):
    with pytest.raises(storage.InvalidURIError):
        storage.filesystem_for(bad)


def test_absolute_uri_resolves_only_relative_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute_uri("runs/demo") == str(tmp_path / "runs" / "demo")
    assert storage.absolute_uri("./a/../b") == str(tmp_path / "b")
    for unchanged in ("", "/abs/path", "file:///abs/path", "s3://bucket/key/x"):
        assert storage.absolute_uri(unchanged) == unchanged


def test_join_refuses_parent_segments():
    with pytest.raises(storage.InvalidURIError, match=r"\.\."):
        storage.join_uri("s3://bkt/out", "../other")


def test_errors_are_one_line_and_picklable():
    err = storage.ObjectNotFoundError("read: no such\nobject", "s3://bkt/x")
    assert "\n" not in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is storage.ObjectNotFoundError and again.uri == "s3://bkt/x" and isinstance(again,
                                                                                                  FileNotFoundError)


# ----------------------------------------------------------------------------------------------------------------------
# Settings


@pytest.fixture
def aws_config(monkeypatch, tmp_path):
    """No endpoint, profile or region from the environment; returns a function that writes the AWS config file."""
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION",
                 "AWS_DEFAULT_REGION", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    return config.write_text


def _resolved() -> tuple:
    s = storage.s3_settings()
    return s.endpoint_url, s.region, s.profile


def test_endpoint_precedence_and_profile_config(aws_config, monkeypatch):
    aws_config(
        "[profile lab]\nregion = eu-west-3\nservices = lab-services\n\n"
        "[services lab-services]\ns3 =\n  endpoint_url = http://127.0.0.1:9999\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "lab")
    assert _resolved() == ("http://127.0.0.1:9999", "eu-west-3", "lab")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://global:1")
    assert storage.s3_settings().endpoint_url == "http://global:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    assert storage.s3_settings().endpoint_url == "http://s3only:2"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert storage.s3_settings().endpoint_url is None


def test_profile_endpoint_region_and_unknown_profile(aws_config, monkeypatch):
    aws_config("[default]\nregion = us-west-2\n\n[profile store]\nendpoint_url = http://127.0.0.1:8333\n"
               "region = ap-south-1\n")
    assert _resolved() == (None, "us-west-2", None)  # the default profile: AWS itself, in its region
    monkeypatch.setenv("AWS_PROFILE", "store")  # endpoint_url in the profile itself (no services section)
    assert _resolved() == ("http://127.0.0.1:8333", "ap-south-1", "store")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    assert storage.s3_settings().region == "eu-north-1"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert storage.s3_settings().region == "eu-central-1"
    # The file is read again when it changes (same environment).
    aws_config("[profile store]\nendpoint_url = http://127.0.0.1:9444\n")
    assert storage.s3_settings().endpoint_url == "http://127.0.0.1:9444"
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(storage.StorageError, match="no-such-profile"):
        storage.filesystem_for("s3://bkt/key")
    monkeypatch.setenv("AWS_PROFILE", "store")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "ftp://host:21")
    with pytest.raises(storage.InvalidURIError, match="http"):
        storage.s3_settings()


def test_settings_hold_no_secret_and_cache_follows_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    s = storage.s3_settings()
    assert "super-secret-value" not in repr(s) and "super-secret-value" not in str(s.__dict__)
    fs1, path = storage.filesystem_for("s3://bkt/key")
    assert path == "bkt/key" and storage.filesystem_for("s3://bkt/other")[0] is fs1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated")
    assert storage.filesystem_for("s3://bkt/key")[0] is not fs1


# ----------------------------------------------------------------------------------------------------------------------
# Round trips (local folder, file:// and SeaweedFS)


@pytest.mark.parametrize("kind", BACKENDS)
def test_round_trip(kind, tmp_path, request):
    root = _roots(kind, tmp_path, request)
    a = storage.join_uri(root, "images", "a.png")
    b = storage.join_uri(root, "images", "sub", "b.png")
    storage.makedirs(root)
    storage.write_bytes(a, b"alpha")
    storage.write_bytes(b, b"beta")
    storage.write_bytes(storage.join_uri(root, "imagesX", "c.png"), b"gamma")  # a sibling sharing the prefix
    assert storage.read_bytes(a) == b"alpha"
    assert storage.exists(a) and storage.exists(storage.join_uri(root, "images"))
    assert not storage.exists(storage.join_uri(root, "nothing.png"))
    assert storage.size(b) == 4
    assert storage.list_files(storage.join_uri(root, "images")) == [a, b]
    assert storage.list_files(root, suffix=".png") == sorted([a, b, storage.join_uri(root, "imagesX", "c.png")])
    assert storage.list_files(storage.join_uri(root, "missing")) == []

    storage.write_bytes(a, b"replaced")  # atomic overwrite
    assert storage.read_bytes(a) == b"replaced"
    if kind != "s3":
        leftovers = [p for p in os.listdir(storage.local_path(storage.join_uri(root, "images"))) if p.startswith(".")]
        assert leftovers == []

    storage.write_json(storage.join_uri(root, "meta.json"), {"n": 1, "name": "ü", "rate": float("nan")})
    assert storage.read_json(storage.join_uri(root, "meta.json")) == {"n": 1, "name": "ü", "rate": None}

    assert storage.delete(a) is True
    assert storage.delete(a) is False
    with pytest.raises(storage.ObjectNotFoundError):
        storage.delete(a, missing_ok=False)
    assert storage.delete_prefix(storage.join_uri(root, "images")) == 1
    assert storage.list_files(storage.join_uri(root, "images")) == []
    assert storage.exists(storage.join_uri(root, "imagesX", "c.png"))  # the sibling survives


@pytest.mark.parametrize("kind", BACKENDS)
def test_missing_and_too_large_are_typed(kind, tmp_path, request):
    root = _roots(kind, tmp_path, request)
    missing = storage.join_uri(root, "nope.bin")
    with pytest.raises(storage.ObjectNotFoundError) as info:
        storage.read_bytes(missing)
    assert isinstance(info.value, FileNotFoundError) and info.value.uri == missing
    with pytest.raises(storage.ObjectNotFoundError):
        storage.read_bytes(missing, max_bytes=10)
    big = storage.join_uri(root, "big.bin")
    storage.write_bytes(big, b"x" * 1000)
    with pytest.raises(storage.ObjectTooLargeError, match="1000 bytes"):
        storage.read_bytes(big, max_bytes=999)
    assert storage.read_bytes(big, max_bytes=1000) == b"x" * 1000
    storage.write_bytes(storage.join_uri(root, "empty.bin"), b"")
    assert storage.read_bytes(storage.join_uri(root, "empty.bin"), max_bytes=10) == b""
    with pytest.raises(storage.StorageError, match="invalid JSON"):
        storage.read_json(big)


@pytest.mark.parametrize("kind", BACKENDS)
def test_create_exclusive(kind, tmp_path, request):
    root = _roots(kind, tmp_path, request)
    lock = storage.join_uri(root, "locks", "run.lock")
    assert storage.write_bytes_if_absent(lock, b"first") is True
    assert storage.write_bytes_if_absent(lock, b"second") is False
    assert storage.read_bytes(lock) == b"first"

    # Concurrent writers: exactly one wins, and the object holds the winner's complete content.
    race = storage.join_uri(root, "locks", "race.lock")
    results: dict[int, bool] = {}
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        barrier.wait()
        results[i] = storage.write_bytes_if_absent(race, f"writer-{i}".encode() * 100)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1, results
    assert storage.read_bytes(race) == f"writer-{winners[0]}".encode() * 100


def test_local_read_of_a_directory_is_a_storage_error(tmp_path):
    with pytest.raises(storage.StorageError, match="directory"):
        storage.read_bytes(str(tmp_path))
    with pytest.raises(storage.InvalidURIError):
        storage.delete_prefix("/")


# ----------------------------------------------------------------------------------------------------------------------
# S3 only


@pytest.mark.integration
def test_s3_wrong_credentials_are_rejected(s3_bucket, monkeypatch):
    uri = s3_bucket + "/secret.txt"
    storage.write_bytes(uri, b"data")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-123")
    with pytest.raises(storage.StoragePermissionError) as info:
        storage.read_bytes(uri)
    assert "not-the-secret-123" not in str(info.value)
    with pytest.raises(storage.StoragePermissionError):
        storage.write_bytes(s3_bucket + "/other.txt", b"x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    with pytest.raises(storage.StoragePermissionError):
        storage.list_files(s3_bucket)


@pytest.mark.integration
def test_s3_missing_bucket_and_bucket_uri(s3_server):
    with pytest.raises(storage.ObjectNotFoundError, match="bucket"):
        storage.read_bytes("s3://no-such-bucket-xyz/key")
    with pytest.raises(storage.InvalidURIError):
        storage.read_bytes("s3://some-bucket")
    with pytest.raises(storage.InvalidURIError):
        storage.delete_prefix("s3://some-bucket")


@pytest.mark.integration
def test_s3_pyarrow_filesystem_and_pickled_clients(s3_bucket):
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = s3_bucket + "/tables/t.parquet"
    fs, path = storage.pyarrow_filesystem(uri)
    pq.write_table(pa.table({"a": [1, 2, 3]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=pickle.loads(pickle.dumps(fs))).column("a").to_pylist() == [1, 2, 3]
    fsspec_fs, fpath = storage.filesystem_for(uri)
    clone = pickle.loads(pickle.dumps(fsspec_fs))  # what Ray does when a task closes over the client
    assert clone.cat_file(fpath)[:4] == b"PAR1"


@pytest.mark.integration
def test_s3_from_a_fresh_process_uses_only_the_environment(s3_bucket):
    uri = s3_bucket + "/from-child.txt"
    code = (
        "import sys; from pipelines.core import storage; "
        f"storage.write_bytes({uri!r}, b'child'); print(storage.read_bytes({uri!r}).decode())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "child"
    assert storage.read_bytes(uri) == b"child"
