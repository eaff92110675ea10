"""An in-memory :class:`kubeloop.storage.ObjectStore` for unit tests, with failure injection.

It keeps the protocol's promises (missing objects raise :class:`ObjectNotFoundError`, a missing bucket
too, listings are prefix-matched and in key order, deletes are idempotent), and the storage contract
tests run it beside the real adapters so that it cannot drift from them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from kubeloop.contracts import DEFAULT_BUCKET, ObjectRef
from kubeloop.storage import (
    DEFAULT_CONTENT_TYPE,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    StorageUnavailableError,
    folder,
)


@dataclass
class _Object:
    data: bytes
    content_type: str
    modified: datetime


class MemoryStore:
    """Objects in a dict. ``fail = True`` makes every call raise :class:`StorageUnavailableError`
    (a store that is down); ``puts`` counts write attempts, failed ones included."""

    def __init__(self, buckets: tuple[str, ...] = (DEFAULT_BUCKET,)) -> None:
        self._buckets: dict[str, dict[str, _Object]] = {b: {} for b in buckets}
        self.fail = False
        self.puts = 0
        self._create_lock = threading.Lock()

    @property
    def objects(self) -> dict[str, bytes]:
        """Every object's bytes by ``s3://`` URI (a snapshot, for assertions)."""
        return {
            ObjectRef(b, k).uri: o.data for b, objs in self._buckets.items() for k, o in sorted(objs.items())
        }

    def _check(self, uri: str) -> None:
        if self.fail:
            raise StorageUnavailableError(f"cannot reach the object store for {uri}: injected failure", uri)

    def _bucket(self, ref: ObjectRef) -> dict[str, _Object]:
        self._check(ref.uri)
        try:
            return self._buckets[ref.bucket]
        except KeyError:
            raise ObjectNotFoundError(f"{ref.uri} does not exist (NoSuchBucket)", ref.uri) from None

    def _object(self, ref: ObjectRef) -> _Object:
        obj = self._bucket(ref).get(ref.key)
        if obj is None:
            raise ObjectNotFoundError(f"{ref.uri} does not exist", ref.uri)
        return obj

    @staticmethod
    def _info(ref: ObjectRef, obj: _Object) -> ObjectInfo:
        return ObjectInfo(
            ref=ref,
            size=len(obj.data),
            last_modified=obj.modified,
            etag=hashlib.md5(obj.data, usedforsecurity=False).hexdigest(),
            content_type=obj.content_type,
        )

    def get(self, ref: ObjectRef) -> bytes:
        return self._object(ref).data

    def get_file(self, ref: ObjectRef, path: Path) -> None:
        data = self._object(ref).data
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def put(self, ref: ObjectRef, data: bytes, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        self.puts += 1
        self._bucket(ref)[ref.key] = _Object(bytes(data), content_type, datetime.now(UTC))

    def put_file(self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE) -> None:
        self.put(ref, path.read_bytes(), content_type)

    def put_file_if_absent(
        self, ref: ObjectRef, path: Path, content_type: str = DEFAULT_CONTENT_TYPE
    ) -> None:
        data = path.read_bytes()
        with self._create_lock:
            self.puts += 1
            objs = self._bucket(ref)
            if ref.key in objs:
                raise ObjectExistsError(f"{ref.uri} already exists", ref.uri)
            objs[ref.key] = _Object(data, content_type, datetime.now(UTC))

    def stat(self, ref: ObjectRef) -> ObjectInfo | None:
        obj = self._bucket(ref).get(ref.key)
        return None if obj is None else self._info(ref, obj)

    def exists(self, ref: ObjectRef) -> bool:
        return self.stat(ref) is not None

    def list(self, prefix: ObjectRef) -> Iterator[ObjectInfo]:
        objs = self._bucket(prefix)
        keys = sorted(k for k in objs if k.startswith(prefix.key))
        return iter([self._info(ObjectRef(prefix.bucket, k), objs[k]) for k in keys])

    def delete(self, ref: ObjectRef) -> None:
        self._check(ref.uri)
        self._buckets.get(ref.bucket, {}).pop(ref.key, None)

    def presigned_get_url(self, ref: ObjectRef, expires: timedelta) -> str:
        self._check(ref.uri)
        return f"memory://{ref.bucket}/{quote(ref.key)}?expires={int(expires.total_seconds())}"

    def bucket_exists(self, bucket: str) -> bool:
        self._check(f"s3://{bucket}")
        return bucket in self._buckets

    def ensure_bucket(self, bucket: str) -> None:
        self._check(f"s3://{bucket}")
        self._buckets.setdefault(bucket, {})


def check_object_store(store: ObjectStore, bucket: str, prefix: str) -> None:
    """The behaviour every :class:`ObjectStore` adapter promises, checked on ``store`` under
    ``s3://<bucket>/<prefix>`` (which must be empty; ``bucket`` must exist). Run against the
    in-memory fake, the local directory and MinIO so that all three stay interchangeable."""
    import tempfile

    def ref(key: str) -> ObjectRef:
        return ObjectRef(bucket, prefix + key)

    missing_bucket = f"{bucket}-missing-{hashlib.sha1(prefix.encode()).hexdigest()[:8]}"
    assert store.bucket_exists(bucket)
    assert not store.bucket_exists(missing_bucket)
    assert list(store.list(ref(""))) == []
    missing: ObjectNotFoundError | None = None
    try:
        store.get(ref("nope"))
    except ObjectNotFoundError as e:
        missing = e
    assert missing is not None, "get of a missing object must raise ObjectNotFoundError"
    assert missing.uri == ref("nope").uri
    assert store.stat(ref("nope")) is None
    assert not store.exists(ref("nope"))
    store.delete(ref("nope"))  # idempotent

    store.put(ref("a/1.json"), b'{"x": 1}', "application/json")
    store.put(ref("a/2.bin"), b"\x00\x01")
    store.put(ref("a2/3.bin"), b"three")
    store.put(ref("a/1.json"), b'{"x": 2}', "application/json")  # replaces
    assert store.get(ref("a/1.json")) == b'{"x": 2}'
    info = store.stat(ref("a/1.json"))
    assert info is not None
    assert (info.size, info.ref) == (8, ref("a/1.json"))
    assert store.exists(ref("a/2.bin"))

    listed = [o.ref.key for o in store.list(ref("a"))]
    assert listed == [prefix + "a/1.json", prefix + "a/2.bin", prefix + "a2/3.bin"], listed
    assert [o.ref.key for o in store.list(folder(ref("a")))] == [prefix + "a/1.json", prefix + "a/2.bin"]
    assert [o.size for o in store.list(folder(ref("a2")))] == [5]

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "big.bin"
        payload = bytes(range(256)) * 4096  # 1 MiB
        src.write_bytes(payload)
        store.put_file(ref("big/blob.bin"), src)
        dst = Path(tmp) / "out" / "blob.bin"
        store.get_file(ref("big/blob.bin"), dst)
        assert dst.read_bytes() == payload
        stat = store.stat(ref("big/blob.bin"))
        assert stat is not None
        assert stat.size == len(payload)
        # Create-only: a new object is written, an existing one is refused and left as it was.
        store.put_file_if_absent(ref("new/data.csv"), src, "text/csv")
        assert store.get(ref("new/data.csv")) == payload
        other = Path(tmp) / "other.bin"
        other.write_bytes(b"other")
        exists: ObjectExistsError | None = None
        try:
            store.put_file_if_absent(ref("new/data.csv"), other)
        except ObjectExistsError as e:
            exists = e
        assert exists is not None, "put_file_if_absent over an existing object must raise ObjectExistsError"
        assert exists.uri == ref("new/data.csv").uri
        assert "already exists" in str(exists)
        assert store.get(ref("new/data.csv")) == payload
        store.put_file(ref("new/data.csv"), other)  # a plain put still replaces it
        assert store.get(ref("new/data.csv")) == b"other"
        try:
            store.put_file_if_absent(ObjectRef(missing_bucket, "k"), other)
        except ObjectNotFoundError:
            pass
        else:
            raise AssertionError("put_file_if_absent into a missing bucket must raise ObjectNotFoundError")
        try:
            store.get_file(ref("big/missing.bin"), Path(tmp) / "missing.bin")
        except ObjectNotFoundError:
            assert not (Path(tmp) / "missing.bin").exists()
        else:
            raise AssertionError("get_file of a missing object must raise ObjectNotFoundError")

    url = store.presigned_get_url(ref("a/1.json"), timedelta(minutes=5))
    assert url

    for o in list(store.list(ref(""))):
        store.delete(o.ref)
    assert list(store.list(ref(""))) == []
    try:
        list(store.list(ObjectRef(missing_bucket, "k")))
    except ObjectNotFoundError:
        pass
    else:
        raise AssertionError("listing a missing bucket must raise ObjectNotFoundError")


__all__ = ["MemoryStore", "check_object_store"]
