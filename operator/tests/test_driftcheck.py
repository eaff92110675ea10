"""The drift check job's pieces on a local-directory store (no cluster, no MinIO): version and
baseline resolution, the window's parts streamed and scored, bad inputs as results, the report, the
status it writes (with a conflicting writer), and its settings."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kubeloop_operator.driftcheck import main
from kubeloop_operator.driftcheck.check import CheckInputs, baseline_ref, run_check
from kubeloop_operator.driftcheck.job import record_check
from kubeloop_operator.driftcheck.logs import PartReader, score_parts, window_parts
from kubeloop_operator.k8s import Kube, KubeError
from kubeloop_operator.status.driftmonitor import apply_check, parse_status

from kubeloop.contracts import (
    PREDICTION_LOG_MODEL_VERSION,
    PREDICTION_LOG_PREDICTION,
    PREDICTION_LOG_TIMESTAMP,
    ObjectRef,
    model_baseline,
    predictions_part,
    predictions_prefix,
)
from kubeloop.drift import Baseline, DriftAccumulator, build_baseline, score
from kubeloop.resources import DriftMonitorSpec
from kubeloop.storage import StorageUnavailableError
from kubeloop.storage.local import LocalStore

NS, MON, DEP, MODEL, VERSION = "team-a", "watch", "bc", "bc-model", 3
NOW = datetime(2025, 3, 4, 12, 0, 0, tzinfo=UTC)
TODAY = NOW.date()
FEATURES = ["a", "b", "c", "color"]


def training(n: int = 4000, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(0, 1, n),
        "b": rng.normal(5, 2, n),
        "c": rng.uniform(0, 10, n),
        "color": rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2]),
    }


def logged(
    n: int, *, shift: float = 0.0, seed: int = 1, at: datetime = NOW - timedelta(minutes=5)
) -> pa.Table:
    """Rows as the server logs them: features, then _timestamp, _model_version, _prediction."""
    cols = training(n, seed)
    data: dict[str, Any] = {
        "a": pa.array(cols["a"] + shift * 3),
        "b": pa.array(cols["b"] + shift * 4),
        "c": pa.array(cols["c"] + shift * 5),
        "color": pa.array(cols["color"].tolist(), type=pa.string()),
        PREDICTION_LOG_TIMESTAMP: pa.array([at] * n, type=pa.timestamp("us", tz="UTC")),
        PREDICTION_LOG_MODEL_VERSION: pa.array([str(VERSION)] * n),
        PREDICTION_LOG_PREDICTION: pa.array(["1"] * n),
    }
    return pa.table(data)


class World:
    """A local store with a model's baseline, and helpers to write prediction-log parts."""

    def __init__(self, root: Path) -> None:
        self.store = LocalStore(root)
        self.store.ensure_bucket("kubeloop")
        self.root = root
        self.baseline = build_baseline(training(), categorical={"color"})
        self.store.put(model_baseline(MODEL, VERSION), self.baseline.to_json().encode())
        self.seq = 0

    def part(
        self, table: pa.Table | bytes, *, day: date = TODAY, written: datetime | None = None
    ) -> ObjectRef:
        self.seq += 1
        ref = predictions_part(NS, DEP, str(VERSION), day, f"part-{self.seq:04d}")
        if isinstance(table, bytes):
            blob = table
        else:
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd", row_group_size=700)
            blob = buf.getvalue()
        self.store.put(ref, blob)
        when = (written or NOW - timedelta(minutes=1)).timestamp()
        os.utime(self.root / ref.bucket / ref.key, (when, when))
        return ref

    def inputs(self, deployment: dict[str, Any] | None = None, **spec: Any) -> CheckInputs:
        doc = {"deployment": DEP, "schedule": "* * * * *", "window": {"lookback": "1h", "minSamples": 100}}
        doc.update(spec)
        md = deployment if deployment is not None else md_object()
        return CheckInputs(NS, MON, DriftMonitorSpec.model_validate(doc), md, "kubeloop")


def md_object(version: Any = str(VERSION), uri: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"modelVersion": version}
    status["modelUri"] = uri if uri is not None else f"s3://kubeloop/models/{MODEL}/{VERSION}/model.onnx"
    return {"metadata": {"name": DEP, "namespace": NS}, "status": status}


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "store")


def test_unshifted_logs_score_no_drift_and_the_report_holds_the_full_result(world: World) -> None:
    for seed in range(3):
        world.part(logged(1000, seed=seed + 10))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.error is None
    assert rec.summary is not None
    s = rec.summary
    assert (s.drifted, s.insufficient_data, s.samples, s.parts, s.skipped_parts) == (False, False, 3000, 3, 0)
    assert s.model_version == str(VERSION)
    assert s.baseline_uri == f"s3://kubeloop/models/{MODEL}/{VERSION}/baseline.json"
    assert s.time == "2025-03-04T12:00:00Z"
    assert {f.name for f in s.features} == set(FEATURES)
    assert all(f.psi is not None and f.psi < 0.05 for f in s.features)
    assert s.report_uri == "s3://kubeloop/drift/team-a/watch/20250304T120000Z.json"
    report = json.loads(world.store.get(ObjectRef.parse(s.report_uri)))
    assert report["modelVersion"] == str(VERSION)
    assert report["parts"] == {"scored": 3, "skipped": []}
    assert report["result"]["samples"] == 3000
    assert sum(report["result"]["features"]["a"]["counts"]) == 3000
    assert report["window"] == {
        "start": "2025-03-04T11:00:00Z",
        "end": "2025-03-04T12:00:00Z",
        "lookback": "1h",
    }


def test_parts_add_up_exactly_to_scoring_the_concatenation(world: World) -> None:
    tables = [logged(n, shift=0.3, seed=s) for n, s in ((1234, 1), (77, 2), (2500, 3))]
    for t in tables:
        world.part(t)
    rec = run_check(world.store, world.inputs(), NOW, PartReader(world.store, batch_rows=100))
    whole = score(world.baseline, pa.concat_tables(tables), min_samples=100)
    assert rec.summary is not None
    got = {f.name: (f.psi, f.jensen_shannon) for f in rec.summary.features}
    assert got == {n: (f.psi, f.jensen_shannon) for n, f in whole.features.items()}
    assert rec.summary.samples == whole.samples == 3811


def test_shifted_logs_drift_and_consecutive_drifts_count(world: World) -> None:
    world.part(logged(2000, shift=1.0))
    status = parse_status({})
    for i in range(3):
        rec = run_check(world.store, world.inputs(), NOW + timedelta(minutes=i))
        assert rec.summary is not None
        assert rec.summary.drifted
        status = apply_check(status, rec, generation=2)
    assert status.consecutive_drifts == 3
    assert status.last_result is not None
    assert status.last_result.share >= 0.75
    cond = {c.type: c for c in status.conditions}
    assert (cond["Checked"].status, cond["Checked"].reason) == ("True", "Scored")
    assert (cond["Drifted"].status, cond["Drifted"].reason) == ("True", "DriftDetected")
    assert cond["Drifted"].observed_generation == 2
    assert [h.drifted for h in status.history] == [True, True, True]
    # a clean check breaks the streak
    world.store.delete(next(iter(world.store.list(predictions_prefix(NS, DEP, str(VERSION))))).ref)
    world.part(logged(2000))
    rec = run_check(world.store, world.inputs(), NOW + timedelta(minutes=5))
    status = apply_check(status, rec, generation=2)
    assert status.consecutive_drifts == 0
    assert {c.type: c.status for c in status.conditions}["Drifted"] == "False"


def test_too_few_samples_is_a_result_not_an_error(world: World) -> None:
    world.part(logged(40))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.error is None
    assert rec.summary is not None
    assert rec.summary.insufficient_data
    assert not rec.summary.drifted
    assert rec.summary.samples == 40
    status = apply_check(parse_status({}), rec, generation=1)
    cond = {c.type: c for c in status.conditions}
    assert (cond["Checked"].status, cond["Checked"].reason) == ("True", "InsufficientData")
    assert cond["Drifted"].status == "Unknown"
    # no logs at all: the same, with zero samples
    empty = World(world.root.parent / "empty")
    rec = run_check(empty.store, empty.inputs(), NOW)
    assert rec.summary is not None
    assert rec.summary.samples == 0
    assert rec.summary.insufficient_data


def test_the_window_leaves_out_old_parts_and_old_rows(world: World) -> None:
    now = datetime(2025, 3, 5, 0, 20, tzinfo=UTC)  # the 90-minute window spans two day folders
    today, yesterday = now.date(), now.date() - timedelta(days=1)
    old = now - timedelta(hours=2)
    world.part(logged(500, shift=1.0, at=old), day=yesterday, written=old)  # before the window: not read
    world.part(logged(500, shift=1.0, at=now - timedelta(hours=3)), written=now)  # old rows, recent part
    world.part(
        logged(300, at=now - timedelta(minutes=40)), day=yesterday, written=now - timedelta(minutes=30)
    )
    world.part(logged(400, at=now - timedelta(minutes=5)), day=today, written=now)
    world.part(logged(200, at=now), day=today - timedelta(days=2), written=now)  # a day outside: not listed
    mixed = pa.concat_tables(
        [logged(100, at=now - timedelta(minutes=10)), logged(50, at=now - timedelta(hours=5))]
    )
    world.part(mixed, written=now)
    inputs = world.inputs(window={"lookback": "90m", "minSamples": 100})
    rec = run_check(world.store, inputs, now)
    assert rec.summary is not None
    assert rec.summary.samples == 300 + 400 + 100
    assert rec.summary.parts == 4  # the part of old rows is read (its rows are filtered), the others not
    assert not rec.summary.drifted
    listed = window_parts(
        world.store, predictions_prefix(NS, DEP, str(VERSION)), now - timedelta(minutes=90), now
    )
    assert len(listed) == 4


def test_a_corrupt_part_is_skipped_and_counted_and_the_rest_scored(world: World) -> None:
    world.part(logged(600))
    bad = world.part(b"PAR1 this is not parquet at all PAR1")
    good = io.BytesIO()
    pq.write_table(logged(500), good)
    truncated = world.part(good.getvalue()[:-300])
    world.part(logged(600, seed=5))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert (rec.summary.samples, rec.summary.parts, rec.summary.skipped_parts) == (1200, 2, 2)
    assert [p.reason for p in rec.skipped] == ["CorruptPart", "CorruptPart"]
    assert bad.uri in rec.skipped[0].message
    assert truncated.uri in rec.skipped[1].message
    status = apply_check(parse_status({}), rec, generation=1)
    cond = {c.type: c for c in status.conditions}
    assert (cond["InputsValid"].status, cond["InputsValid"].reason) == ("False", "CorruptPart")
    assert "2 of 4 prediction-log part(s) skipped" in cond["InputsValid"].message
    assert cond["Checked"].status == "True"


def test_a_part_missing_a_feature_or_with_a_wrongly_typed_one_is_skipped_and_named(world: World) -> None:
    world.part(logged(600))
    missing = world.part(logged(300).drop_columns(["b"]))
    t = logged(300)
    wrong = world.part(t.set_column(t.schema.get_field_index("a"), "a", pa.array(["x"] * 300)))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert rec.summary.samples == 600
    by_reason = {p.reason: p.message for p in rec.skipped}
    assert set(by_reason) == {"FeatureMissing", "FeatureWrongType"}
    assert missing.uri in by_reason["FeatureMissing"]
    assert "'b'" in by_reason["FeatureMissing"]
    assert wrong.uri in by_reason["FeatureWrongType"]
    assert "'a'" in by_reason["FeatureWrongType"]
    assert "numeric in the baseline" in by_reason["FeatureWrongType"]
    status = apply_check(parse_status({}), rec, generation=1)
    assert {c.type: c.reason for c in status.conditions}["InputsValid"] == "PartsSkipped"


def test_a_categorical_feature_may_be_logged_as_numbers_and_nulls_count_as_missing(world: World) -> None:
    t = logged(300)
    t = t.set_column(t.schema.get_field_index("color"), "color", pa.array([1, None, 2] * 100))
    t = t.set_column(t.schema.get_field_index("a"), "a", pa.array([None] * 300, type=pa.float64()))
    world.part(t)
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert rec.summary.samples == 300
    assert not rec.skipped
    report = json.loads(world.store.get(ObjectRef.parse(str(rec.summary.report_uri))))
    assert report["result"]["features"]["a"]["missing"] == 300
    assert report["result"]["features"]["color"]["unseen"] == 200


@pytest.mark.parametrize(
    ("deployment", "reason"),
    [
        (None, "ModelDeploymentNotFound"),
        (md_object(version=None), "ModelVersionUnknown"),
        (md_object(uri="/models/foreign.onnx"), "BaselineNotFound"),
        (md_object(version="9", uri="s3://kubeloop/models/bc-model/9/model.onnx"), "BaselineNotFound"),
    ],
)
def test_inputs_that_allow_no_result_are_a_reason_not_a_crash(
    world: World, deployment: dict[str, Any] | None, reason: str
) -> None:
    world.part(logged(600))
    inputs = world.inputs()
    inputs = CheckInputs(inputs.namespace, inputs.monitor, inputs.spec, deployment, inputs.bucket)
    rec = run_check(world.store, inputs, NOW)
    assert rec.summary is None
    assert rec.error is not None
    assert rec.error.reason == reason
    status = apply_check(
        parse_status({"lastResult": {"drifted": True, "time": "2025-03-04T11:00:00Z"}}), rec, 1
    )
    cond = {c.type: c for c in status.conditions}
    assert (cond["Checked"].status, cond["Checked"].reason) == ("False", reason)
    assert status.last_check_time == "2025-03-04T12:00:00Z"
    assert status.last_result is not None
    assert status.last_result.time == "2025-03-04T11:00:00Z"
    assert status.history[-1].reason == reason


def test_an_invalid_baseline_is_named(world: World) -> None:
    world.store.put(model_baseline(MODEL, VERSION), b'{"schemaVersion": 1, "rowCount": 0}')
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.error is not None
    assert rec.error.reason == "BaselineInvalid"
    assert "baseline.json is not a valid baseline" in rec.error.message


def test_disabled_psi_is_not_computed(world: World) -> None:
    world.part(logged(600, shift=1.0))
    rec = run_check(world.store, world.inputs(metrics={"psi": {"enabled": False}}), NOW)
    assert rec.summary is not None
    assert rec.summary.drifted
    assert all(f.psi is None and f.jensen_shannon is not None for f in rec.summary.features)


def test_large_parts_are_spooled_to_a_file_removed_after_reading(world: World, tmp_path: Path) -> None:
    for seed in range(3):
        world.part(logged(1500, shift=0.2, seed=seed))
    spool = tmp_path / "spool"
    spool.mkdir()
    streamed = run_check(
        world.store, world.inputs(), NOW, PartReader(world.store, max_memory_part_bytes=0, spool_dir=spool)
    )
    in_memory = run_check(world.store, world.inputs(), NOW)
    assert streamed.summary is not None
    assert in_memory.summary is not None
    assert streamed.summary.features == in_memory.summary.features
    assert list(spool.iterdir()) == []


def test_the_report_failing_keeps_the_result(world: World) -> None:
    world.part(logged(600))

    class NoReports(LocalStore):
        def put(self, ref: ObjectRef, data: bytes, content_type: str = "") -> None:
            from kubeloop.storage import StorageUnavailableError

            raise StorageUnavailableError("store down", ref.uri)

    store = NoReports(world.store.root)
    rec = run_check(store, world.inputs(), NOW)
    assert rec.summary is not None
    assert rec.summary.report_uri is None
    assert rec.summary.samples == 600
    assert "could not be written" in rec.note


def test_a_baseline_named_by_the_deployment_is_used(world: World) -> None:
    world.part(logged(600))
    other = ObjectRef("kubeloop", "elsewhere/baseline.json")
    world.store.put(other, world.baseline.to_json().encode())
    md = md_object()
    md["status"]["baselineUri"] = other.uri
    rec = run_check(world.store, world.inputs(md), NOW)
    assert rec.summary is not None
    assert rec.summary.baseline_uri == other.uri


def test_baseline_ref_is_beside_the_model() -> None:
    assert baseline_ref("s3://kubeloop/models/m/4/model.onnx") == ObjectRef(
        "kubeloop", "models/m/4/baseline.json"
    )
    assert baseline_ref("/tmp/x.onnx") is None


# --- the status write --------------------------------------------------------------------------------


class FakeKube:
    """Records status patches; the first ``conflicts`` of them meet a 409 (another writer got there first)."""

    def __init__(self, obj: dict[str, Any], conflicts: int = 0) -> None:
        self.obj = obj
        self.conflicts = conflicts
        self.patches: list[tuple[dict[str, Any], str | None]] = []

    def get(self, kind: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
        return json.loads(json.dumps(self.obj))

    def patch_status(
        self, kind: Any, namespace: str | None, name: str, status: Any, *, resource_version: str | None = None
    ) -> dict[str, Any]:
        self.patches.append((dict(status), resource_version))
        if self.conflicts:
            self.conflicts -= 1
            # the operator wrote meanwhile: its fields and its condition change, and the version
            self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)
            self.obj["status"]["phase"] = "Active"
            self.obj["status"]["conditions"] = [
                {
                    "type": "Scheduled",
                    "status": "True",
                    "reason": "CronJobReady",
                    "message": "",
                    "lastTransitionTime": "2025-03-04T11:59:00Z",
                    "observedGeneration": 1,
                }
            ]
            raise KubeError(409, "Conflict", "the object has been modified")
        self.obj["status"].update(status)
        return self.obj


def test_the_status_write_touches_only_the_checks_fields_and_survives_a_conflict(world: World) -> None:
    world.part(logged(600, shift=1.0))
    rec = run_check(world.store, world.inputs(), NOW)
    obj = {"metadata": {"name": MON, "namespace": NS, "generation": 1, "resourceVersion": "10"}, "status": {}}
    kube = FakeKube(obj, conflicts=1)
    assert record_check(kube, NS, MON, json.loads(json.dumps(obj)), rec, retries=3)  # type: ignore[arg-type]
    (_first, rv1), (second, rv2) = kube.patches
    assert (rv1, rv2) == ("10", "11")
    assert set(second) == {"lastCheckTime", "lastResult", "consecutiveDrifts", "history", "conditions"}
    assert {c["type"] for c in second["conditions"]} == {"Scheduled", "Checked", "InputsValid", "Drifted"}
    assert kube.obj["status"]["phase"] == "Active"  # the operator's field, untouched


def test_a_monitor_re_created_during_the_check_does_not_get_its_result(world: World) -> None:
    """The monitor was deleted and created again under the same name while the check ran: the first
    write meets a 409 (another resourceVersion), and the object read again is another monitor (another
    uid) whose spec this check did not score. The result is dropped, not written into it."""
    world.part(logged(600, shift=1.0))
    rec = run_check(world.store, world.inputs(), NOW)
    meta = {"name": MON, "namespace": NS, "generation": 1, "resourceVersion": "10", "uid": "uid-old"}
    checked = {"metadata": meta, "status": {}}
    kube = FakeKube({"metadata": {**meta, "uid": "uid-new", "resourceVersion": "42"}, "status": {}})

    def conflict(*_: Any, **kw: Any) -> dict[str, Any]:
        kube.patches.append(({}, kw.get("resource_version")))
        if kw.get("resource_version") != "42":
            raise KubeError(409, "Conflict", "the object has been modified")
        raise AssertionError("the re-created monitor was written")

    kube.patch_status = conflict  # type: ignore[method-assign]
    assert not record_check(kube, NS, MON, checked, rec, retries=3)  # type: ignore[arg-type]
    assert [rv for _, rv in kube.patches] == ["10"]
    assert kube.obj["status"] == {}
    # the same monitor (same uid) read again is written, as before
    kube = FakeKube({"metadata": {**meta, "resourceVersion": "11"}, "status": {}})
    assert record_check(kube, NS, MON, checked, rec, retries=3)  # type: ignore[arg-type]
    assert kube.obj["status"]["consecutiveDrifts"] == 1


def test_the_console_script_names_missing_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("NAMESPACE", "MONITOR", "S3_ENDPOINT"):
        monkeypatch.delenv(f"KUBELOOP_DRIFTCHECK_{var}", raising=False)
    assert main(["--namespace", "x"]) == 2
    err = capsys.readouterr().err
    assert "KUBELOOP_DRIFTCHECK_MONITOR is not set" in err
    assert "KUBELOOP_DRIFTCHECK_S3_ENDPOINT" in err
    monkeypatch.setenv("KUBELOOP_DRIFTCHECK_BATCH_ROWS", "zero")
    assert main(["--namespace", "x", "--monitor", "y"]) == 2
    assert "KUBELOOP_DRIFTCHECK_BATCH_ROWS" in capsys.readouterr().err


def test_baseline_json_round_trip_is_what_the_trainer_writes(world: World) -> None:
    assert Baseline.from_json(world.store.get(model_baseline(MODEL, VERSION))) == world.baseline


def test_a_spooled_part_that_cannot_be_fetched_leaves_no_spool_file(world: World, tmp_path: Path) -> None:
    """A large part deleted between the listing and its download is not counted, and the spool file
    made for it is removed (one was left per such part); a store failure the same."""
    kept = world.part(logged(600))
    gone = world.part(logged(600, seed=7))
    spool = tmp_path / "spool"
    spool.mkdir()
    parts = window_parts(
        world.store, predictions_prefix(NS, DEP, str(VERSION)), NOW - timedelta(hours=1), NOW
    )
    assert [p.ref for p in parts] == [kept, gone]
    world.store.delete(gone)
    reader = PartReader(world.store, max_memory_part_bytes=0, spool_dir=spool)
    scored = score_parts(reader, parts, world.baseline, NOW - timedelta(hours=1))
    assert (scored.parts, scored.rows_read) == (1, 600)
    assert list(spool.iterdir()) == []

    class Down(LocalStore):
        def get_file(self, ref: ObjectRef, path: Path) -> None:
            raise StorageUnavailableError("store down", ref.uri)

    with pytest.raises(StorageUnavailableError):
        score_parts(
            PartReader(Down(world.store.root), max_memory_part_bytes=0, spool_dir=spool),
            parts,
            world.baseline,
            NOW,
        )
    assert list(spool.iterdir()) == []


def test_rows_after_the_checks_time_are_not_in_its_window(world: World) -> None:
    """The window is [now - lookback, now], as the report says: a part flushed while the check runs
    holds rows after ``now``; they belong to the next check's window, not to this one (counted in
    both when the lookback equals the schedule's period)."""
    world.part(logged(300, at=NOW - timedelta(minutes=5)), written=NOW - timedelta(minutes=4))
    late = pa.concat_tables(
        [logged(200, at=NOW - timedelta(seconds=3)), logged(150, shift=1.0, at=NOW + timedelta(seconds=20))]
    )
    world.part(late, written=NOW + timedelta(seconds=25))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert rec.summary.samples == 300 + 200
    assert rec.summary.parts == 2


def test_a_part_with_a_feature_column_twice_is_skipped_and_named(world: World) -> None:
    world.part(logged(600))
    t = logged(300)
    twice = world.part(pa.Table.from_arrays([*t.columns, t.column("b")], names=[*t.column_names, "b"]))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert (rec.summary.samples, rec.summary.parts, rec.summary.skipped_parts) == (600, 1, 1)
    [problem] = rec.skipped
    assert problem.reason == "FeatureAmbiguous"
    assert twice.uri in problem.message
    assert "'b'" in problem.message


def test_a_window_whose_every_part_is_unreadable_is_no_result_naming_the_parts(world: World) -> None:
    """Logs of another feature set (a baseline of another model) and a corrupt part: nothing could be
    scored, which is not "0 logged predictions, insufficient data"."""
    other = world.part(logged(600).drop_columns(["color"]))
    corrupt = world.part(b"")
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is None
    assert rec.error is not None
    assert rec.error.reason == "LogsUnreadable"
    assert "none of the 2 prediction-log part(s)" in rec.error.message
    assert other.uri in rec.error.message
    assert "'color'" in rec.error.message
    assert corrupt.uri in rec.error.message
    before = {"lastResult": {"drifted": True, "time": "2025-03-04T11:00:00Z", "samples": 900}}
    status = apply_check(parse_status(before), rec, 1)
    cond = {c.type: c for c in status.conditions}
    assert (cond["Checked"].status, cond["Checked"].reason) == ("False", "LogsUnreadable")
    assert status.last_result is not None
    assert status.last_result.samples == 900  # the last real result stays; no made-up "no drift"
    assert status.history[-1].reason == "LogsUnreadable"


def test_a_window_without_parts_is_insufficient_data_not_an_error(world: World) -> None:
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.error is None
    assert rec.summary is not None
    assert (rec.summary.samples, rec.summary.insufficient_data) == (0, True)


def test_an_unforeseen_error_in_the_check_is_recorded_in_the_status_not_a_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the check did not foresee still ends in the status (Checked=False, CheckFailed, the
    error named) and a failing exit code; the previous result is kept, not silently left stale."""
    from kubeloop_operator.driftcheck import job
    from kubeloop_operator.driftcheck.settings import DriftCheckSettings

    meta = {"name": MON, "namespace": NS, "generation": 1, "resourceVersion": "10", "uid": "u1"}
    spec = {"deployment": DEP, "schedule": "* * * * *"}
    kube = FakeKube({"metadata": meta, "spec": spec, "status": {}})
    kube.close = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(Kube, "connect", staticmethod(lambda *a, **kw: kube))
    monkeypatch.setattr(job, "open_store", lambda settings: world.store)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("feature 'a': something nobody planned for")

    monkeypatch.setattr(job, "run_check", broken)
    settings = DriftCheckSettings(namespace=NS, monitor=MON, s3_endpoint="127.0.0.1:9")
    assert job.run(settings, NOW) == 1
    cond = {c["type"]: c for c in kube.obj["status"]["conditions"]}
    assert (cond["Checked"]["status"], cond["Checked"]["reason"]) == ("False", "CheckFailed")
    assert "RuntimeError: feature 'a': something nobody planned for" in cond["Checked"]["message"]
    assert kube.obj["status"]["lastCheckTime"] == "2025-03-04T12:00:00Z"
    assert "something nobody planned for" in caplog.text


def test_many_small_parts_build_the_baselines_lookup_tables_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server flushing every few seconds leaves thousands of small parts a day. Each part's counts
    are kept apart (a part failing halfway adds nothing), but the baseline's lookup tables are built
    once: with 50,000 training categories, building them took ~40 ms a part, far more than counting
    a part of a few rows (300 such parts: 13.6 s before, load average 2.9)."""
    from kubeloop_operator.driftcheck import logs

    built: list[int] = []

    class Counting(DriftAccumulator):
        def __init__(self, baseline: Baseline) -> None:
            built.append(1)
            super().__init__(baseline)

    monkeypatch.setattr(logs, "DriftAccumulator", Counting)
    for seed in range(30):
        world.part(logged(5, seed=seed))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert (rec.summary.parts, rec.summary.samples) == (30, 150)
    assert len(built) == 1


def test_a_part_that_cannot_be_spooled_fails_the_check_instead_of_being_called_corrupt(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check's own disk (no spool directory, full, read-only) is no fault of the logs: good parts
    must not be reported as corrupt, nor the window scored without them."""
    from kubeloop_operator.driftcheck import job
    from kubeloop_operator.driftcheck.logs import SpoolError
    from kubeloop_operator.driftcheck.settings import DriftCheckSettings

    world.part(logged(600))
    world.part(logged(600, seed=2))
    missing = tmp_path / "no-such-spool-dir"
    reader = PartReader(world.store, max_memory_part_bytes=0, spool_dir=missing)
    with pytest.raises(SpoolError, match="no-such-spool-dir"):
        run_check(world.store, world.inputs(), NOW, reader)

    meta = {"name": MON, "namespace": NS, "generation": 1, "resourceVersion": "10", "uid": "u1"}
    kube = FakeKube({"metadata": meta, "spec": {"deployment": DEP, "schedule": "* * * * *"}, "status": {}})
    kube.close = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(Kube, "connect", staticmethod(lambda *a, **kw: kube))
    monkeypatch.setattr(job, "open_store", lambda settings: world.store)
    monkeypatch.setattr(
        job, "run_check", lambda store, inputs, now, reader: run_check(store, world.inputs(), now, reader)
    )
    settings = DriftCheckSettings(
        namespace=NS, monitor=MON, s3_endpoint="127.0.0.1:9", max_memory_part_bytes=0, spool_dir=missing
    )
    assert job.run(settings, NOW) == 1
    cond = {c["type"]: c for c in kube.obj["status"]["conditions"]}
    assert (cond["Checked"]["status"], cond["Checked"]["reason"]) == ("False", "SpoolFailed")
    assert "KUBELOOP_DRIFTCHECK_SPOOL_DIR" in cond["Checked"]["message"]


def _with_timestamps(t: pa.Table, stamps: pa.Array) -> pa.Table:
    return t.set_column(t.schema.get_field_index(PREDICTION_LOG_TIMESTAMP), PREDICTION_LOG_TIMESTAMP, stamps)


def test_timestamps_logged_as_text_still_bound_the_window_and_others_are_named(world: World) -> None:
    """A part re-exported by another tool with ``_timestamp`` as ISO 8601 text: its rows from before
    the window are left out, as for a timestamp column. A ``_timestamp`` that cannot place a row in
    time (epoch numbers of an unknown unit, text that is no time) skips the part, named; before,
    every row of such a part was counted, however old."""
    inside, old = "2025-03-04T11:55:00Z", "2025-03-02T11:55:00Z"
    world.part(_with_timestamps(logged(400), pa.array([inside, old] * 200)))
    world.part(_with_timestamps(logged(100), pa.array(["2025-03-04 11:50:00"] * 100)))  # no zone: UTC
    epoch = world.part(_with_timestamps(logged(300), pa.array([1_741_000_000] * 300)))
    garbled = world.part(_with_timestamps(logged(300), pa.array(["yesterday"] * 300)))
    rec = run_check(world.store, world.inputs(), NOW)
    assert rec.summary is not None
    assert (rec.summary.samples, rec.summary.parts) == (300, 2)
    by_uri = {p.message.split(":", 2)[0] + ":" + p.message.split(":", 2)[1]: p for p in rec.skipped}
    assert by_uri[epoch.uri].reason == "TimestampWrongType"
    assert "'_timestamp' is int64" in by_uri[epoch.uri].message
    assert by_uri[garbled.uri].reason == "TimestampWrongType"
    assert "yesterday" in by_uri[garbled.uri].message


def test_a_check_stopped_by_sigterm_says_so_in_the_status(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Job's activeDeadlineSeconds (or a deleted pod) stops the check with SIGTERM: within the grace
    period the status records that this check has no result, instead of still showing the last one
    as if this check had never run."""
    import signal
    import time

    from kubeloop_operator.driftcheck import job
    from kubeloop_operator.driftcheck.settings import DriftCheckSettings

    class KilledError(Exception):
        pass

    def killed(*_: Any) -> None:
        raise KilledError  # what the default action (the process ends, nothing written) stands for here

    meta = {"name": MON, "namespace": NS, "generation": 1, "resourceVersion": "10", "uid": "u1"}
    kube = FakeKube({"metadata": meta, "spec": {"deployment": DEP, "schedule": "* * * * *"}, "status": {}})
    kube.close = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setattr(Kube, "connect", staticmethod(lambda *a, **kw: kube))
    monkeypatch.setattr(job, "open_store", lambda settings: world.store)

    def slow(*_: Any, **__: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the check")

    monkeypatch.setattr(job, "run_check", slow)
    settings = DriftCheckSettings(namespace=NS, monitor=MON, s3_endpoint="127.0.0.1:9")
    before = signal.signal(signal.SIGTERM, killed)
    try:
        started = time.monotonic()
        assert job.run(settings, NOW) == 1
        assert time.monotonic() - started < 4
        assert signal.getsignal(signal.SIGTERM) is killed  # put back as it was
    finally:
        signal.signal(signal.SIGTERM, before)
    cond = {c["type"]: c for c in kube.obj["status"]["conditions"]}
    assert (cond["Checked"]["status"], cond["Checked"]["reason"]) == ("False", "CheckInterrupted")
    assert "SIGTERM" in cond["Checked"]["message"]


def test_a_baseline_uri_outside_object_storage_is_named_as_such(world: World) -> None:
    md = md_object()
    md["status"]["baselineUri"] = "https://registry.example/baseline.json"
    inputs = world.inputs()
    rec = run_check(world.store, CheckInputs(NS, MON, inputs.spec, md, inputs.bucket), NOW)
    assert rec.error is not None
    assert rec.error.reason == "BaselineNotFound"
    assert "status.baselineUri https://registry.example/baseline.json" in rec.error.message
    assert "model.onnx, which is not in object storage" not in rec.error.message  # the model is
