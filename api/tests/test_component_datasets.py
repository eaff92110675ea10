"""Datasets through the facade against real MinIO: streamed upload with validation, list, stat,
presigned download, delete; bad files refused with clear messages, leaving nothing in storage."""

from __future__ import annotations

import httpx
import pytest
from api_cluster import ApiEnv, Tenants, expect
from api_testdata import BadFile, bad_files, good_csv, good_parquet
from kubeloop_testing.csv_cases import CSV_PARITY

pytestmark = pytest.mark.component

SIZE_LIMIT = 256 * 1024  # the live facade's dataset_max_bytes (conftest)
BAD = bad_files(SIZE_LIMIT)


def _stored(api_env: ApiEnv, ns: str) -> list[str]:
    s3 = api_env.minio.client()
    out = s3.list_objects_v2(Bucket=api_env.minio.bucket, Prefix=f"datasets/{ns}/")
    keys = [o["Key"] for o in out.get("Contents", [])]
    uploads = s3.list_multipart_uploads(Bucket=api_env.minio.bucket, Prefix=f"datasets/{ns}/")
    return keys + [f"(multipart) {u['Key']}" for u in uploads.get("Uploads", [])]


def test_upload_list_stat_download_delete(api_env: ApiEnv, tenants: Tenants) -> None:
    ns = tenants.a.namespace
    base = f"/api/v1/namespaces/{ns}/datasets"
    with api_env.client(tenants.a.headers) as c:
        for name, data in (("bc.csv", good_csv()), ("bc.parquet", good_parquet())):
            r = c.put(f"{base}/{name}", content=data, params={"target": "target"},
                      headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            body = expect(r, 201)
            assert body["uri"] == f"s3://{api_env.minio.bucket}/datasets/{ns}/{name}"
            assert body["report"]["rows"] == 80
            assert len(body["report"]["columns"]) == 31
            assert {c["name"]: c["type"] for c in body["report"]["columns"]}["target"] == "integer"
            assert body["sizeBytes"] == len(data)
        expect(c.put(f"{base}/bc.csv", content=good_csv()), 409)
        expect(c.put(f"{base}/bc.csv", content=good_csv(60), params={"overwrite": "true"}), 201)
        items = expect(c.get(base), 200)["items"]
        assert [(d["name"], d["format"]) for d in items] == [("bc.csv", "csv"), ("bc.parquet", "parquet")]
        assert expect(c.get(f"{base}/bc.csv"), 200)["sizeBytes"] == len(good_csv(60))
        url = expect(c.get(f"{base}/bc.parquet/url", params={"expiresInSeconds": 60}), 200)["url"]
        assert url.startswith(f"http://{api_env.minio.endpoint}/")
        assert httpx.get(url, timeout=10).content == good_parquet()
        expect(c.delete(f"{base}/bc.parquet"), 200)
        expect(c.get(f"{base}/bc.parquet"), 404)
        expect(c.delete(f"{base}/bc.parquet"), 404)
        expect(c.get(f"{base}/nope.csv/url"), 404)
        expect(c.put(f"{base}/x.txt", content=b"a,b\n1,2\n3,4\n"), 422, field="dataset")
        expect(
            c.put(
                f"{base}/y.csv",
                content=b"--x\r\n",
                headers={"Content-Type": "multipart/form-data; boundary=x"},
            ),
            415,
        )
        expect(c.delete(f"{base}/bc.csv"), 200)
    assert _stored(api_env, ns) == []


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_dataset_refused_and_nothing_stored(api_env: ApiEnv, tenants: Tenants, bad: BadFile) -> None:
    ns = tenants.b.namespace
    with api_env.client(tenants.b.headers) as c:
        params = {"target": bad.target} if bad.target else {}
        r = c.put(f"/api/v1/namespaces/{ns}/datasets/{bad.name}", content=bad.data, params=params)
        body = expect(r, bad.status)
        assert body["details"]["causes"][0]["field"] == bad.field, body
        assert bad.words.lower() in body["message"].lower(), body["message"]
    assert _stored(api_env, ns) == [], f"{bad.id} left something in storage"


def test_concurrent_uploads_of_one_new_name_store_one_and_refuse_the_others(
    api_env: ApiEnv, tenants: Tenants
) -> None:
    # Each upload finds the name free; MinIO's conditional write (If-None-Match: *) decides which one
    # lands. The others are 409 naming the dataset, and the stored file is the winner's, whole.
    import threading

    ns = tenants.a.namespace
    url = f"/api/v1/namespaces/{ns}/datasets/race.csv"
    bodies = [good_csv(20 + i) for i in range(4)]
    start = threading.Barrier(len(bodies))
    results: dict[int, httpx.Response] = {}

    def upload(i: int) -> None:
        with api_env.client(tenants.a.headers) as c:
            start.wait()
            results[i] = c.put(url, content=bodies[i], headers={"Content-Type": "text/csv"})

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [i for i, r in results.items() if r.status_code == 201]
    assert len(won) == 1, {i: (r.status_code, r.text[:200]) for i, r in results.items()}
    for i, r in results.items():
        if i != won[0]:
            body = expect(r, 409, field="dataset")
            assert 'dataset "race.csv" exists' in body["message"]
    s3 = api_env.minio.client()
    stored = s3.get_object(Bucket=api_env.minio.bucket, Key=f"datasets/{ns}/race.csv")["Body"].read()
    assert stored == bodies[won[0]]
    with api_env.client(tenants.a.headers) as c:
        expect(c.delete(url), 200)
    assert _stored(api_env, ns) == []


def test_csv_files_are_judged_at_upload_as_the_trainer_judges_them(api_env: ApiEnv, tenants: Tenants) -> None:
    # kubeloop_testing.csv_cases, through the live facade into MinIO: what the trainer reads from the
    # store (images/trainer/tests/test_data.py, same table) is what the upload accepts, row for row
    ns = tenants.a.namespace
    base = f"/api/v1/namespaces/{ns}/datasets"
    with api_env.client(tenants.a.headers) as c:
        for case in CSV_PARITY:
            r = c.put(f"{base}/parity.csv", content=case.data, headers={"Content-Type": "text/csv"})
            if case.refused:
                body = expect(r, 422)
                assert case.refused in body["message"], (case.id, body["message"])
            else:
                report = expect(r, 201)["report"]
                got = (tuple(col["name"] for col in report["columns"]), report["rows"])
                assert got == (case.columns, case.rows), case.id
                expect(c.delete(f"{base}/parity.csv"), 200)
    assert _stored(api_env, ns) == []
