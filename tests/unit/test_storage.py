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
from minio.error import S3Error
from urllib3 import HTTPHeaderDict

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


class _FakeS3:
    """The minio client's requests below put_object, for one key, without a network. ``stored`` is
    the key's object as its metadata headers (None: no object); ``on_write`` decides what a
    conditional write to a free key does: ``store`` (and answer), ``lose-then-412`` (store it, lose
    the answer, refuse the pool's retry), ``lose`` (store it, the answer never comes), ``fail`` (the
    answer never comes, nothing stored) or ``refuse``."""

    def __init__(self, on_write: str, stored: dict[str, str] | None = None) -> None:
        self.on_write = on_write
        self.stored = stored
        self.writes: list[dict[str, str]] = []
        self.stats = 0
        self.stat_fails = False
        self._upload: dict[str, str] = {}

    def install(self, store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
        client = store._client
        monkeypatch.setattr(client, "_put_object", self._put_object)
        monkeypatch.setattr(client, "_create_multipart_upload", self._create_multipart_upload)
        monkeypatch.setattr(client, "_upload_part", lambda *a, **k: "etag")
        monkeypatch.setattr(client, "_abort_multipart_upload", lambda *a, **k: None)
        monkeypatch.setattr(client, "stat_object", self._stat_object)
        monkeypatch.setattr(store, "_complete_if_absent", lambda *a, **k: self._write(self._upload))

    def _write(self, headers: dict[str, str]) -> None:
        self.writes.append(headers)
        refused = S3Error(urllib3.HTTPResponse(status=412), "PreconditionFailed", "exists", "/k", "r", "h")
        # The retries ran out, or a Complete (a POST) is never retried.
        lost = urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/k",
            urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        )
        if self.stored is not None or self.on_write == "refuse":
            raise refused
        if self.on_write == "fail":
            raise lost
        # As MinIO answers a HEAD: the metadata header title-cased.
        self.stored = {k.title(): v for k, v in headers.items() if k.lower().startswith("x-amz-meta-")}
        if self.on_write == "lose-then-412":
            self.writes.append(headers)
            raise refused
        if self.on_write == "lose":
            raise lost

    def _put_object(self, bucket: str, key: str, data: bytes, headers: dict[str, str], **_: object) -> None:
        assert headers["If-None-Match"] == "*"
        self._write(headers)

    def _create_multipart_upload(self, bucket: str, key: str, headers: dict[str, str]) -> str:
        self._upload = headers
        return "upload-1"

    def _stat_object(self, bucket: str, key: str) -> Object:
        self.stats += 1
        if self.stat_fails:
            raise urllib3.exceptions.ReadTimeoutError(None, "/k", "read timed out")  # type: ignore[arg-type]
        if self.stored is None:
            raise S3Error(urllib3.HTTPResponse(status=404), "NoSuchKey", "missing", "/k", "r", "h")
        return Object(bucket, key, size=3, metadata=HTTPHeaderDict(self.stored))


_REF = ObjectRef("kubeloop", "datasets/ns/d.csv")


@pytest.fixture(params=["single-put", "multipart"])
def s3_create(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[S3Store, Path]:
    """An S3Store (no server) and a file to create, sent as one PutObject or, with the size limit
    lowered, as a multipart upload."""
    from kubeloop.storage import s3 as s3_module

    if request.param == "multipart":
        monkeypatch.setattr(s3_module, "_SINGLE_PUT_MAX", 0)
        monkeypatch.setattr(s3_module, "_PART_SIZE", 2)
    f = tmp_path / "d.csv"
    f.write_bytes(b"a,b\n1,2\n")
    return S3Store(S3Config(endpoint="127.0.0.1:1", retries=0)), f


@pytest.mark.parametrize("on_write", ["lose-then-412", "lose"])
def test_s3_create_only_write_whose_answer_was_lost_is_ours(
    on_write: str, s3_create: tuple[S3Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store took the write, its answer was lost: refused on retry (412) or failed outright. The
    object carries this call's write id, so the call succeeds."""
    store, f = s3_create
    fake = _FakeS3(on_write)
    fake.install(store, monkeypatch)
    store.put_file_if_absent(_REF, f, "text/csv")
    assert fake.stats == 1
    assert fake.stored is not None
    write_id = fake.stored["X-Amz-Meta-Kubeloop-Write-Id"]
    assert len(write_id) == 32
    assert all(h["x-amz-meta-kubeloop-write-id"] == write_id for h in fake.writes)


@pytest.mark.parametrize(
    "stored",
    [{"X-Amz-Meta-Kubeloop-Write-Id": "0" * 32}, {}],
    ids=["another-create-only-write", "a-plain-put"],
)
def test_s3_create_only_write_over_someone_elses_object_is_refused(
    stored: dict[str, str], s3_create: tuple[S3Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeloop.storage import ObjectExistsError

    store, f = s3_create
    fake = _FakeS3("store", stored=dict(stored))
    fake.install(store, monkeypatch)
    with pytest.raises(ObjectExistsError, match=r"s3://kubeloop/datasets/ns/d\.csv already exists"):
        store.put_file_if_absent(_REF, f)
    assert fake.stored == stored
    assert fake.stats == 1


def test_s3_each_create_only_write_has_its_own_id(
    s3_create: tuple[S3Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second create of the key by the same process (a new upload, not a retry) is someone else's:
    refused, though the first one's object is there."""
    from kubeloop.storage import ObjectExistsError

    store, f = s3_create
    fake = _FakeS3("store")
    fake.install(store, monkeypatch)
    store.put_file_if_absent(_REF, f)
    with pytest.raises(ObjectExistsError):
        store.put_file_if_absent(_REF, f)
    ids = [h["x-amz-meta-kubeloop-write-id"] for h in fake.writes]
    assert len(ids) == 2
    assert ids[0] != ids[1]


def test_s3_create_only_write_when_the_store_cannot_say_whose_object_it_is(
    s3_create: tuple[S3Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stat after a refusal fails: nothing is known, the refusal stands."""
    from kubeloop.storage import ObjectExistsError

    store, f = s3_create
    fake = _FakeS3("refuse", stored={})
    fake.stat_fails = True
    fake.install(store, monkeypatch)
    with pytest.raises(ObjectExistsError):
        store.put_file_if_absent(_REF, f)
    assert fake.stats == 1


def test_s3_create_only_write_that_lost_its_answer_and_did_not_land_is_unavailable(
    s3_create: tuple[S3Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, f = s3_create
    fake = _FakeS3("fail")
    fake.install(store, monkeypatch)
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        store.put_file_if_absent(_REF, f)
    assert fake.stats == 1
    assert fake.stored is None


def test_s3_create_only_write_to_a_store_that_is_down_asks_nothing_more(
    s3_create: tuple[S3Store, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No connection could be made: the write never reached the store and a stat would only wait for
    the same timeouts again."""
    store, f = s3_create
    fake = _FakeS3("store")
    fake.install(store, monkeypatch)

    def down(*_: object, **__: object) -> str:
        raise urllib3.exceptions.MaxRetryError(
            None,  # type: ignore[arg-type]
            "/k",
            urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
        )

    monkeypatch.setattr(store._client, "_put_object", down)
    monkeypatch.setattr(store._client, "_create_multipart_upload", down)
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        store.put_file_if_absent(_REF, f)
    assert fake.stats == 0
