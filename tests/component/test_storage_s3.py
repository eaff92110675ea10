"""The S3 adapter (kubeloop.storage.s3) against the local MinIO: the same contract as the in-memory fake
and the local directory, the error mapping (missing, refused credentials, nothing listening) and the
bounds on a store that is down."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from datetime import timedelta

import pytest
from kubeloop_testing.storage import check_object_store

from kubeloop.contracts import ObjectRef
from kubeloop.storage import (
    ObjectNotFoundError,
    S3Config,
    StorageAccessDeniedError,
    StorageUnavailableError,
)
from kubeloop.storage.s3 import S3Store

pytestmark = pytest.mark.component


def _store(minio_server, **overrides) -> S3Store:  # type: ignore[no-untyped-def]
    cfg = {
        "endpoint": minio_server.url,
        "access_key": minio_server.access_key,
        "secret_key": minio_server.secret_key,
        "region": minio_server.region,
        **overrides,
    }
    return S3Store(S3Config(**cfg))


def test_s3_store_keeps_the_contract(minio_server, s3_prefix) -> None:  # type: ignore[no-untyped-def]
    check_object_store(_store(minio_server), minio_server.bucket, s3_prefix)


def test_presigned_url_downloads_without_credentials(minio_server, s3_prefix) -> None:  # type: ignore[no-untyped-def]
    store = _store(minio_server)
    ref = ObjectRef(minio_server.bucket, s3_prefix + "shared/data.csv")
    store.put(ref, b"a,b\n1,2\n", "text/csv")
    url = store.presigned_get_url(ref, timedelta(minutes=2))
    assert url.startswith(minio_server.url + "/")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, no proxy
    with opener.open(url, timeout=10) as resp:
        assert resp.read() == b"a,b\n1,2\n"


def test_wrong_credentials_are_access_denied(minio_server, s3_prefix) -> None:  # type: ignore[no-untyped-def]
    store = _store(minio_server, secret_key="not-the-secret")
    ref = ObjectRef(minio_server.bucket, s3_prefix + "x")
    with pytest.raises(StorageAccessDeniedError, match="refused access") as info:
        store.put(ref, b"x")
    assert "not-the-secret" not in str(info.value)
    with pytest.raises(StorageAccessDeniedError):
        store.get(ref)


def test_missing_bucket_and_object(minio_server, s3_prefix) -> None:  # type: ignore[no-untyped-def]
    store = _store(minio_server)
    with pytest.raises(ObjectNotFoundError, match="NoSuchBucket"):
        store.put(ObjectRef("kubeloop-no-such-bucket", "k"), b"x")
    with pytest.raises(ObjectNotFoundError, match="NoSuchKey"):
        store.get(ObjectRef(minio_server.bucket, s3_prefix + "missing"))


def test_ensure_bucket_is_idempotent(minio_server) -> None:  # type: ignore[no-untyped-def]
    store = _store(minio_server)
    store.ensure_bucket(minio_server.bucket)  # exists: no error
    assert store.bucket_exists(minio_server.bucket)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_store_down_is_unavailable_within_bounds() -> None:
    """Nothing listens: every call fails as StorageUnavailableError after the bounded retries, in
    seconds rather than the client library's default of minutes."""
    store = S3Store(
        S3Config(endpoint=f"127.0.0.1:{_closed_port()}", access_key="k", secret_key="s", region="us-east-1")
    )
    ref = ObjectRef("kubeloop", "models/m/1/model.onnx")
    calls = [
        lambda: store.get(ref),
        lambda: store.put(ref, b"x"),
        lambda: store.stat(ref),
        lambda: list(store.list(ref)),
        lambda: store.bucket_exists("kubeloop"),
    ]
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="unreachable") as info:
            call()
        assert time.monotonic() - t0 < 10
        assert "s3://kubeloop" in str(info.value)


def test_presigned_url_needs_no_server() -> None:
    store = S3Store(
        S3Config(
            endpoint=f"127.0.0.1:{_closed_port()}",
            access_key="AKIAEXAMPLE",
            secret_key="secret-example",
            presign_endpoint="https://objects.example.test",
        )
    )
    url = store.presigned_get_url(ObjectRef("kubeloop", "datasets/a b.csv"), timedelta(minutes=15))
    assert url.startswith("https://objects.example.test/kubeloop/datasets/a%20b.csv?")
    assert "X-Amz-Expires=900" in url
    assert "secret-example" not in url


def test_create_only_put_is_conditional_in_minio(minio_server, s3_prefix, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """put_file_if_absent sends If-None-Match: * (PutObject, and CompleteMultipartUpload for a file
    sent in parts): MinIO refuses the write when the key exists, so of racing creates exactly one
    lands, whole. Multipart is forced here with small parts instead of a large file."""
    from kubeloop.storage import ObjectExistsError
    from kubeloop.storage import s3 as s3_module

    store = _store(minio_server)
    for single_max in (s3_module._SINGLE_PUT_MAX, 0):
        monkeypatch.setattr(s3_module, "_SINGLE_PUT_MAX", single_max)
        monkeypatch.setattr(s3_module, "_PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
        ref = ObjectRef(minio_server.bucket, f"{s3_prefix}race-{single_max}.csv")
        files = []
        for i in range(4):
            f = tmp_path / f"upload-{single_max}-{i}.bin"
            f.write_bytes(bytes([i]) * (6 * 1024 * 1024 if single_max == 0 else 1000))
            files.append(f)
        won, lost = _race(
            lambda i, ref=ref, files=files: store.put_file_if_absent(ref, files[i], "text/csv"), 4
        )
        assert len(won) == 1, (single_max, won, lost)
        assert sorted(won + lost) == list(range(len(files)))
        assert store.get(ref) == files[won[0]].read_bytes()
        info = store.stat(ref)
        assert info is not None
        assert info.content_type == "text/csv"
        with pytest.raises(ObjectExistsError, match="already exists"):
            store.put_file_if_absent(ref, files[0])
        # No multipart upload is left open by the losers.
        assert not list(store._client._list_multipart_uploads(minio_server.bucket, prefix=s3_prefix).uploads)


def _race(create, n: int) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
    """``create(i)`` from ``n`` threads released at once: the indexes that won and those refused."""
    import threading

    from kubeloop.storage import ObjectExistsError

    start = threading.Barrier(n)
    won: list[int] = []
    lost: list[int] = []

    def run(i: int) -> None:
        start.wait()
        try:
            create(i)
            won.append(i)
        except ObjectExistsError:
            lost.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, lost


class _LosingProxy:
    """A loopback HTTP/1.1 proxy in front of MinIO that loses one answer: the first request that
    ``lose(method, target, headers)`` picks reaches MinIO and is served there, then the connection to
    the client is reset instead of relaying the response (a read timeout or a reset after the server
    stored the object). Each connection carries one request (``Connection: close`` is forced), so the
    proxy needs no response framing. ``seen`` records ``(method, target, headers, upstream status)``."""

    def __init__(self, upstream: str, lose) -> None:  # type: ignore[no-untyped-def]
        import threading

        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._lose = lose
        self._lost = False
        self._lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, str], int]] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        import struct

        with client:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = client.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, body = buf.split(b"\r\n\r\n", 1)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
            assert "transfer-encoding" not in headers  # the minio client sends a Content-Length
            while len(body) < int(headers.get("content-length", "0")):
                chunk = client.recv(1 << 20)
                if not chunk:
                    return
                body += chunk
            kept = [line for line in lines if line.split(":", 1)[0].strip().lower() != "connection"]
            request = "\r\n".join([request_line, *kept, "Connection: close", "", ""]).encode("latin-1")
            with socket.create_connection(self._upstream) as up:
                up.sendall(request + body)
                response = b""
                while chunk := up.recv(65536):
                    response += chunk
            status = int(response.split(b" ", 2)[1])
            with self._lock:
                lose = not self._lost and self._lose(method, target, headers)
                self._lost = self._lost or lose
                self.seen.append((method, target, headers, status))
            if lose:  # MinIO has answered: drop the answer with a reset
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            client.sendall(response)


def _conditional_put(method: str, target: str, headers: dict[str, str]) -> bool:
    return method == "PUT" and headers.get("if-none-match") == "*" and "uploadId=" not in target


def _conditional_complete(method: str, target: str, headers: dict[str, str]) -> bool:
    return method == "POST" and headers.get("if-none-match") == "*" and "uploadId=" in target


@pytest.mark.parametrize("path", ["single-put", "multipart"])
def test_create_only_put_whose_answer_was_lost_is_still_ours(  # type: ignore[no-untyped-def]
    path, minio_server, s3_prefix, tmp_path, monkeypatch
) -> None:
    """The store took the create-only write but its answer never came back (the connection reset
    after MinIO stored the object): the PutObject is retried by the HTTP pool and refused with 412,
    the CompleteMultipartUpload (a POST, not retried) fails outright. Either way the object holds this
    very upload, so the call succeeds; a second, different upload of the key is still refused and
    changes nothing. Multipart is forced with small parts instead of a large file."""
    from kubeloop.storage import ObjectExistsError
    from kubeloop.storage import s3 as s3_module

    multipart = path == "multipart"
    if multipart:
        monkeypatch.setattr(s3_module, "_SINGLE_PUT_MAX", 0)
        monkeypatch.setattr(s3_module, "_PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    lose = _conditional_complete if multipart else _conditional_put
    proxy = _LosingProxy(minio_server.endpoint, lose)
    try:
        via_proxy = _store(minio_server, endpoint=proxy.endpoint)
        direct = _store(minio_server)
        ref = ObjectRef(minio_server.bucket, f"{s3_prefix}lost-{path}.csv")
        ours = tmp_path / "ours.csv"
        ours.write_bytes(b"a,b\n" + b"1,2\n" * ((6 * 1024 * 1024 if multipart else 1000) // 4))
        theirs = tmp_path / "theirs.csv"
        theirs.write_bytes(b"a,b\n3,4\n")

        via_proxy.put_file_if_absent(ref, ours, "text/csv")

        # The answer was lost: MinIO stored the object (200); the PutObject's retry was refused (412).
        writes = [s for m, t, h, s in proxy.seen if lose(m, t, h)]
        assert writes == ([200] if multipart else [200, 412]), proxy.seen
        assert direct.get(ref) == ours.read_bytes()
        info = direct.stat(ref)
        assert info is not None
        assert info.content_type == "text/csv"
        # How the call knew: MinIO keeps the write id (given at CreateMultipartUpload for parts) and
        # hands it back on a HEAD.
        stored = direct._client.stat_object(ref.bucket, ref.key).metadata
        assert re.fullmatch("[0-9a-f]{32}", stored["X-Amz-Meta-Kubeloop-Write-Id"]), stored
        with pytest.raises(ObjectExistsError, match="already exists"):
            direct.put_file_if_absent(ref, theirs)
        with pytest.raises(ObjectExistsError, match="already exists"):
            via_proxy.put_file_if_absent(ref, theirs)
        assert direct.get(ref) == ours.read_bytes()
        assert not list(direct._client._list_multipart_uploads(minio_server.bucket, prefix=s3_prefix).uploads)
    finally:
        proxy.close()
