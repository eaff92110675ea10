"""Request bodies never lose a key: a mapping whose keys collide (written twice, or written differently
but the same name in JSON) is refused with a 400 naming the key and its line, in YAML and in JSON
(kubectl's YAML reader and the API server's strict decoding refuse duplicate fields too). Keys that
are different names in JSON are all kept, as kubectl keeps them."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator

import pytest
import yaml
from api_fakekube import FakeKube
from kubeloop_api.app import create_app
from kubeloop_api.kube import Kube
from kubeloop_api.metrics import ApiMetrics
from kubeloop_api.settings import ApiSettings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

A = {"Authorization": "Bearer tok-alice"}
Y = {**A, "Content-Type": "application/yaml"}
TJS = "/api/v1/namespaces/a/trainingjobs"
TJ = {
    "apiVersion": "kubeloop.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "tj1"},
    "spec": {"dataset": {"uri": "s3://kubeloop/datasets/a.csv", "target": "y"}, "task": "classification"},
}
# Line 1 apiVersion, 2 kind, 3 metadata, 4 name, 5 labels: the first label is on line 6.
HEAD = "apiVersion: kubeloop.io/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: tj1\n"
SPEC = "spec:\n  dataset: {uri: 's3://kubeloop/datasets/a.csv', target: y}\n  task: classification\n"


@pytest.fixture
def fake() -> FakeKube:
    fk = FakeKube()
    fk.users["tok-alice"] = {"username": "alice", "groups": ["team-a"]}
    return fk


@pytest.fixture
def client(fake: FakeKube) -> Iterator[TestClient]:
    s = ApiSettings()
    m = ApiMetrics()
    with TestClient(create_app(s, kube=Kube(s, m, transport=fake.transport()), metrics=m)) as c:
        yield c


def _labels(*lines: str) -> str:
    return HEAD + "  labels:\n" + "".join(f"    {line}\n" for line in lines) + SPEC


def _created(fake: FakeKube) -> list[str]:
    return [q.method for q in fake.requests if q.method in ("POST", "PATCH") and "kubeloop.io/" in q.url.path]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (("a: x", "b: y", "a: z"), "body: duplicate key 'a' at line 8 (first at line 6)"),
        # Written differently, the same name in JSON (kubectl would keep one of them silently).
        (("1: x", "'1': y"), "body: duplicate key '1' at line 7 (first at line 6, as 1)"),
        (("yes: x", "true: y"), "body: duplicate key 'true' at line 7 (first at line 6, as yes)"),
        (("0x10: x", "16: y"), "body: duplicate key '16' at line 7 (first at line 6, as 0x10)"),
        (("~: x", "null: y"), "body: duplicate key None at line 7 (first at line 6, as ~)"),
        (("1.0: x", "1.00: y"), "body: duplicate key 1.0 at line 7 (first at line 6, as 1.0)"),
    ],
)
def test_yaml_keys_that_collide_are_a_400_naming_the_key_and_its_line(
    client: TestClient, fake: FakeKube, keys: tuple[str, ...], message: str
) -> None:
    r = client.post(TJS, content=_labels(*keys), headers=Y)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == message
    assert r.json()["reason"] == "BadRequest"
    assert _created(fake) == []


def test_yaml_duplicates_anywhere_are_refused(client: TestClient, fake: FakeKube) -> None:
    # At the top level, in a flow mapping, inside a list, and in a merge patch.
    twice = HEAD + SPEC + "spec:\n  task: regression\n"
    r = client.post(TJS, content=twice, headers=Y)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "body: duplicate key 'spec' at line 8 (first at line 5)"
    flow = HEAD.replace("  name: tj1\n", "  name: tj1\n  annotations: {a: '1', b: '2', a: '3'}\n") + SPEC
    r = client.post(TJS, content=flow, headers=Y)
    assert r.json()["message"] == "body: duplicate key 'a' at line 5 (first at line 5)"
    listed = HEAD + SPEC + "  features:\n  - {name: x, name: y}\n"
    r = client.post(TJS, content=listed, headers=Y)
    assert r.json()["message"] == "body: duplicate key 'name' at line 9 (first at line 9)"
    assert client.post(TJS, json=TJ, headers=A).status_code == 201
    r = client.patch(f"{TJS}/tj1", content="metadata:\n  labels: {a: x}\n  labels: {a: y}\n", headers=Y)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "body: duplicate key 'labels' at line 3 (first at line 2)"
    assert _created(fake) == ["POST"]


def test_yaml_keys_that_are_different_names_in_json_are_all_kept(client: TestClient, fake: FakeKube) -> None:
    # 1 and true are equal in Python (a dict keeps one of them), not in JSON: kubectl keeps both.
    r = client.post(
        TJS, content=_labels("1: one", "true: yes-label", "'01': zero-one", "false: n0"), headers=Y
    )
    assert r.status_code == 201, r.text
    labels = fake.objects[("a", "trainingjobs", "tj1")]["metadata"]["labels"]
    assert labels == {"1": "one", "true": "yes-label", "01": "zero-one", "false": "n0"}


def test_yaml_keys_that_are_not_names_are_a_422_naming_the_field(client: TestClient, fake: FakeKube) -> None:
    # 1 and 1.0 are equal in Python: the dict kept one and the float key went unnoticed.
    r = client.post(TJS, content=_labels("1: x", "1.0: y"), headers=Y)
    assert r.status_code == 422, r.text
    assert r.json()["details"]["causes"][0]["field"] == "metadata.labels"
    assert "1.0" in r.json()["message"]
    assert _created(fake) == []


def test_yaml_merge_keys_may_be_overridden(client: TestClient, fake: FakeKube) -> None:
    # A key written next to a merge (<<) replaces the merged one: that is what merging means, not a duplicate.
    doc = HEAD.replace("  name: tj1\n", "  name: tj1\n  annotations: &base {team: a, tier: dev}\n")
    doc += "  labels:\n    <<: *base\n    tier: prod\n" + SPEC
    r = client.post(TJS, content=doc, headers=Y)
    assert r.status_code == 201, r.text
    stored = fake.objects[("a", "trainingjobs", "tj1")]["metadata"]
    assert stored["labels"] == {"team": "a", "tier": "prod"}
    assert stored["annotations"] == {"team": "a", "tier": "dev"}
    # A map merged before it is used itself (its merges already folded in) is still not a duplicate...
    fake.objects.clear()
    doc = HEAD.replace("  name: tj1\n", "  name: tj1\n  labels: {<<: &b {<<: {x: '1'}, x: '2'}, y: '3'}\n")
    r = client.post(TJS, content=doc + "  annotations: *b\n" + SPEC, headers=Y)
    assert r.status_code == 201, r.text
    stored = fake.objects[("a", "trainingjobs", "tj1")]["metadata"]
    assert (stored["labels"], stored["annotations"]) == ({"x": "2", "y": "3"}, {"x": "2"})
    # ... but a key written twice in a map that is only merged is.
    doc = HEAD.replace("  name: tj1\n", "  name: tj1\n  labels: {<<: {x: '1', x: '2'}}\n")
    r = client.post(TJS, content=doc + SPEC, headers=Y)
    assert r.json()["message"] == "body: duplicate key 'x' at line 5 (first at line 5)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"metadata": {"name": "tj1",\n "labels": {"a": "x",\n  "a": "y"}}}',
            "body: duplicate key 'a' at line 3",
        ),
        (
            '{"metadata": {"name": "tj1"}, "metadata": {"name": "tj2"}}',
            "body: duplicate key 'metadata' at line 1",
        ),
        # The same name escaped differently is the same key.
        (
            '{"metadata": {"name": "tj1",\n "labels": {"a": "x", "\\u0061": "y"}}}',
            "body: duplicate key 'a' at line 2",
        ),
        (
            '{"spec": {"features": [{"name": "x"}, {"name": "y",\n\n "name": "z"}]}}',
            "body: duplicate key 'name' at line 3",
        ),
    ],
)
def test_json_duplicate_keys_are_a_400_naming_the_key_and_its_line(
    client: TestClient, fake: FakeKube, body: str, message: str
) -> None:
    r = client.post(TJS, content=body, headers=A)
    assert r.status_code == 400, r.text
    assert r.json()["message"] == message
    assert _created(fake) == []
    r = client.patch(
        f"{TJS}/tj1", content=body, headers={**A, "Content-Type": "application/merge-patch+json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["message"] == message


def test_keys_that_look_alike_but_differ_are_kept_in_json(client: TestClient, fake: FakeKube) -> None:
    body = {
        **TJ,
        "metadata": {"name": "tj1", "labels": {"a": "1", "A": "2", "a ": "3", "1": "4", "true": "5"}},
    }
    r = client.post(TJS, content=json.dumps(body), headers=A)
    assert r.status_code == 201, r.text
    assert fake.objects[("a", "trainingjobs", "tj1")]["metadata"]["labels"] == body["metadata"]["labels"]


def _best_of_3(fn: object, arg: bytes) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn(arg)  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def test_large_bodies_decode_in_linear_time() -> None:
    # The collision check is one dict lookup per key: 4x the keys must cost about 4x, not 16x.
    from kubeloop_api.bodies import decode_document

    def yaml_doc(n: int) -> bytes:
        return yaml.safe_dump(
            {**TJ, "metadata": {"name": "tj1", "annotations": {f"k{i}": "v" for i in range(n)}}}
        ).encode()

    def json_doc(n: int) -> bytes:
        return json.dumps({**TJ, "metadata": {"name": "tj1", "annotations": {f"k{i}": "v" for i in range(n)}},
                           "items": [{"a": i, "b": i} for i in range(n)]}).encode()  # fmt: skip

    for make, ctype, n in ((yaml_doc, "application/yaml", 300), (json_doc, "application/json", 5000)):
        small, large = make(n), make(4 * n)
        assert len(decode_document(large, ctype)["metadata"]["annotations"]) == 4 * n
        ratio = _best_of_3(lambda b, c=ctype: decode_document(b, c), large) / _best_of_3(
            lambda b, c=ctype: decode_document(b, c), small
        )
        assert ratio < 9, (ctype, ratio)


def test_json_data_refuses_two_keys_with_one_name() -> None:
    # A map built in Python (not read from a body) may hold 1 and "1": JSON has one name for both.
    from kubeloop_api.bodies import json_data
    from kubeloop_api.errors import InvalidError

    with pytest.raises(InvalidError) as e:
        json_data({"labels": {1: "a", "1": "b"}})
    assert e.value.message == "labels: map key '1' given twice"
    assert json_data({"labels": {1: "a", "2": "c"}}) == {"labels": {"1": "a", "2": "c"}}


def test_typed_json_bodies_refuse_duplicate_keys_too(client: TestClient, fake: FakeKube) -> None:
    # The routes whose body FastAPI decodes into a model (tokens, scale, canary, aliases) kept the last.
    j = {**A, "Content-Type": "application/json"}
    r = client.post("/api/v1/tokens", content='{"name": "ci",\n "user": "alice", "user": "root"}', headers=j)
    assert r.status_code == 400, r.json().get("user")
    assert r.json()["message"] == "body: duplicate key 'user' at line 2"
    assert not [k for k in fake.objects if k[1] == "secrets"]
    for path, body in (
        ("modeldeployments/m/scale", '{"replicas": 1, "replicas": 5}'),
        ("modeldeployments/m/canary", '{"trafficPercent": 10, "trafficPercent": 90}'),
    ):
        r = client.put(f"/api/v1/namespaces/a/{path}", content=body, headers=j)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["message"].startswith("body: duplicate key '"), r.text
    r = client.post("/api/v1/tokens", content='{"name": "ci"}', headers=j)
    assert r.status_code == 201


def test_yaml_bodies_are_parsed_by_libyaml_where_pyyaml_has_it() -> None:
    # The pure-Python parser takes seconds on a manifest near the body limit, holding the event loop.
    import yaml
    from kubeloop_api import bodies

    assert yaml.__with_libyaml__, "the locked PyYAML wheel is built with libyaml"
    assert issubclass(bodies._YamlLoader, yaml.CSafeLoader)
