"""The object-store layer without a network: its contract on the in-memory fake and the local
directory, configuration checks and URI reading (the S3 adapter: tests/component/test_storage_s3.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import urllib3
from kubeloop_testing.storage import MemoryStore, check_object_store
from minio.datatypes import Object

from kubeloop.contracts import ObjectRef
from kubeloop.storage import (
    ObjectNotFoundError,
    ObjectStore,
    S3Config,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    folder,
    read_uri,
    split_endpoint,
)
from kubeloop.storage.local import LocalStore
from kubeloop.storage.s3 import S3Store


def test_memory_store_keeps_the_contract() -> None:
    store = MemoryStore(buckets=("kubeloop",))
    assert isinstance(store, ObjectStore)
    check_object_store(store, "kubeloop", "tests/memory/")


def test_local_store_keeps_the_contract(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert isinstance(store, ObjectStore)
    store.ensure_bucket("kubeloop")
    check_object_store(store, "kubeloop", "tests/local/")


def test_contract_check_catches_a_store_that_breaks_it() -> None:
    """The contract check can fail: a store whose get() returns empty bytes for missing objects."""

    class Lenient(MemoryStore):
        def get(self, ref: ObjectRef) -> bytes:
            try:
                return super().get(ref)
            except ObjectNotFoundError:
                return b""

    with pytest.raises(AssertionError, match="ObjectNotFoundError"):
        check_object_store(Lenient(), "kubeloop", "p/")


def test_s3_store_satisfies_the_protocol() -> None:
    assert isinstance(S3Store(S3Config(endpoint="127.0.0.1:1")), ObjectStore)


def test_local_store_refuses_keys_that_escape_the_bucket(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.ensure_bucket("b")
    for key in ("../x", "a/../../x", "/abs", "a//b", "", "a/"):
        with pytest.raises(StorageConfigError, match="invalid object key"):
            store.put(ObjectRef("b", key), b"x")
    with pytest.raises(StorageConfigError, match="invalid bucket"):
        store.put(ObjectRef("..", "k"), b"x")
    assert not (tmp_path / "x").exists()


def test_local_store_missing_bucket_is_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ObjectNotFoundError, match="NoSuchBucket"):
        store.put(ObjectRef("nobucket", "k"), b"x")
    with pytest.raises(ObjectNotFoundError):
        store.get(ObjectRef("nobucket", "k"))
    store.delete(ObjectRef("nobucket", "k"))  # idempotent


def test_memory_store_failure_injection() -> None:
    store = MemoryStore()
    store.fail = True
    with pytest.raises(StorageUnavailableError, match="injected"):
        store.put(ObjectRef("kubeloop", "k"), b"x")
    assert store.puts == 1
    store.fail = False
    store.put(ObjectRef("kubeloop", "k"), b"x")
    assert store.objects == {"s3://kubeloop/k": b"x"}


def test_folder() -> None:
    assert folder(ObjectRef("b", "models/m/3")) == ObjectRef("b", "models/m/3/")
    assert folder(ObjectRef("b", "models/m/3/")) == ObjectRef("b", "models/m/3/")


def test_split_endpoint() -> None:
    assert split_endpoint("minio:9000", False) == ("minio:9000", False)
    assert split_endpoint("minio:9000", True) == ("minio:9000", True)
    assert split_endpoint("https://s3.example:443", False) == ("s3.example:443", True)
    assert split_endpoint("http://127.0.0.1:9000", True) == ("127.0.0.1:9000", False)
    assert split_endpoint("http://127.0.0.1:9000/", False) == ("127.0.0.1:9000", False)
    for bad in ("ftp://x:1", "http://", "", "minio:9000/path", "http://h:1/bucket"):
        with pytest.raises(StorageConfigError, match="host:port or http"):
            split_endpoint(bad, False)


def test_s3_config_is_checked() -> None:
    with pytest.raises(StorageConfigError, match="together"):
        S3Config(endpoint="h:1", access_key="a")
    with pytest.raises(StorageConfigError, match="timeouts"):
        S3Config(endpoint="h:1", connect_timeout_s=0)
    with pytest.raises(StorageConfigError, match="retries"):
        S3Config(endpoint="h:1", retries=-1)
    with pytest.raises(StorageConfigError):
        S3Config(endpoint="h:1", presign_endpoint="nope://x")
    assert "s3cr3t" not in repr(S3Config(endpoint="h:1", access_key="a", secret_key="s3cr3t"))
    assert "s3cr3t" not in repr(S3Store(S3Config(endpoint="h:1", access_key="a", secret_key="s3cr3t")))


def test_read_uri(tmp_path: Path) -> None:
    p = tmp_path / "data.csv"
    p.write_bytes(b"a,b\n")
    assert read_uri(str(p), None) == b"a,b\n"
    assert read_uri(f"file://{p}", None) == b"a,b\n"
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        read_uri(str(tmp_path / "missing.csv"), None)
    with pytest.raises(StorageError, match="cannot read"):
        read_uri(str(tmp_path), None)  # a directory
    with pytest.raises(StorageConfigError, match="no object store"):
        read_uri("s3://kubeloop/datasets/x.csv", None)
    with pytest.raises(StorageConfigError, match="not an s3://bucket/key"):
        read_uri("s3://Bad_Bucket/x", MemoryStore())
    store = MemoryStore()
    store.put(ObjectRef("kubeloop", "datasets/x.csv"), b"1,2\n")
    assert read_uri("s3://kubeloop/datasets/x.csv", store) == b"1,2\n"
    with pytest.raises(ObjectNotFoundError):
        read_uri("s3://kubeloop/datasets/y.csv", store)


def test_local_store_listing_stays_inside_the_bucket(tmp_path: Path) -> None:
    """A prefix with '..' or a leading '/' names no key the store can hold (S3 lists nothing for it);
    the walk must neither leave the bucket (other buckets, files beside the root) nor crash."""
    store = LocalStore(tmp_path / "root")
    store.ensure_bucket("b")
    store.ensure_bucket("other")
    store.put(ObjectRef("other", "secret/x.csv"), b"s")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "f.txt").write_bytes(b"o")
    for prefix in ("../other/", "../../outside/", "a/../../other/", "/etc/", "/", "./", "a//"):
        assert list(store.list(ObjectRef("b", prefix))) == [], prefix


def test_local_store_listing_survives_a_delete_meanwhile(tmp_path: Path) -> None:
    """Listing is lazy: an object deleted between the walk and its turn is left out (as it is from a
    later S3 page), not a bare FileNotFoundError out of the iterator."""
    store = LocalStore(tmp_path)
    store.ensure_bucket("b")
    for k in ("p/a", "p/b", "p/c"):
        store.put(ObjectRef("b", k), b"x")
    it = store.list(ObjectRef("b", "p/"))
    assert next(it).ref.key == "p/a"
    store.delete(ObjectRef("b", "p/b"))
    assert [i.ref.key for i in it] == ["p/c"]


def test_read_uri_decodes_a_file_uri(tmp_path: Path) -> None:
    """A file:// URI percent-encodes spaces, '%' and non-ASCII (RFC 8089, Path.as_uri()); read_uri must
    decode it, or LocalStore's own URLs for such keys cannot be read back."""
    store = LocalStore(tmp_path)
    store.ensure_bucket("b")
    for key in ("my file.csv", "données/é.csv", "a%b.csv"):
        ref = ObjectRef("b", key)
        store.put(ref, key.encode())
        url = store.presigned_get_url(ref, timedelta(minutes=1))
        assert url.startswith("file:///")
        assert read_uri(url, None) == key.encode()


class _BrokenDownload:
    """A GetObject response whose body breaks after the first chunk (the connection reset)."""

    headers: dict[str, str] = {}

    def stream(self, amt: int = 0) -> Iterator[bytes]:
        yield b"PAR1 half a part"
        raise urllib3.exceptions.ProtocolError("Connection broken: reset by peer")

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def test_s3_get_file_that_fails_midway_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The protocol promises a temporary name, then a rename: a download that breaks must leave
    neither the target nor the client's partial ``*.part.minio`` file behind (no request is sent: the
    client's two calls are faked)."""
    store = S3Store(S3Config(endpoint="127.0.0.1:1", retries=0))
    stat = Object("kubeloop", "predictions/p.parquet", etag="abc123", size=100)
    monkeypatch.setattr(store._client, "stat_object", lambda *a, **k: stat)
    monkeypatch.setattr(store._client, "get_object", lambda *a, **k: _BrokenDownload())
    target = tmp_path / "spool" / "p.parquet"
    with pytest.raises(StorageUnavailableError, match=r"s3://kubeloop/predictions/p\.parquet"):
        store.get_file(ObjectRef("kubeloop", "predictions/p.parquet"), target)
    assert list((tmp_path / "spool").iterdir()) == []


def test_uploading_a_missing_local_file_is_not_an_unreachable_store(tmp_path: Path) -> None:
    """A local file that is not there is the caller's problem, as LocalStore says it: not a
    StorageUnavailableError ('worth retrying later', 'object store unreachable'). No request is sent:
    the file is looked at first."""
    missing = tmp_path / "model.onnx"
    for store in (S3Store(S3Config(endpoint="127.0.0.1:1", retries=0)), LocalStore(tmp_path)):
        if isinstance(store, LocalStore):
            store.ensure_bucket("kubeloop")
        with pytest.raises(StorageError, match="is not a file") as e:
            store.put_file(ObjectRef("kubeloop", "models/m/1/model.onnx"), missing)
        assert not isinstance(e.value, StorageUnavailableError)
        assert e.value.uri == "s3://kubeloop/models/m/1/model.onnx"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_concurrent_creates_of_one_key_have_exactly_one_winner(kind: str, tmp_path: Path) -> None:
    """Two uploads of a new name that both found it free: one creates it, the others get
    ObjectExistsError, and the stored bytes are the winner's whole file (never a mix, never replaced)."""
    import threading

    from kubeloop.storage import ObjectExistsError

    store: ObjectStore
    if kind == "local":
        store = LocalStore(tmp_path / "store")
        store.ensure_bucket("kubeloop")
    else:
        store = MemoryStore(buckets=("kubeloop",))
    ref = ObjectRef("kubeloop", "datasets/ns/race.csv")
    files = []
    for i in range(8):
        f = tmp_path / f"upload-{i}.csv"
        f.write_bytes(f"a,b\n{i},{i}\n".encode() * 20000)
        files.append(f)
    start = threading.Barrier(len(files))
    won: list[int] = []
    lost: list[int] = []

    def upload(i: int) -> None:
        start.wait()
        try:
            store.put_file_if_absent(ref, files[i], "text/csv")
            won.append(i)
        except ObjectExistsError:
            lost.append(i)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, (won, lost)
    assert sorted(won + lost) == list(range(len(files)))
    assert store.get(ref) == files[won[0]].read_bytes()
    if kind == "local":  # no temporary file left behind by the losers
        assert [p.name for p in (tmp_path / "store" / "kubeloop" / "datasets" / "ns").iterdir()] == [
            "race.csv"
        ]
