"""Benchmark: kubeloop.drift against Evidently's DataDriftPreset on the same data (issue #6).

Run with ``make bench-drift`` (which prepares an environment where Evidently 0.7.x works).

* Data: reference and current tables of 100k rows x 50 features (40 numeric, 10 categorical),
  generated from a fixed seed, as pandas DataFrames handed unchanged to both libraries. The current
  table drifts in a known subset of columns, so both tools must find the same drifted columns.
* Ours, as in production: the baseline is built once from the reference beforehand (timed
  separately); the timed check is scoring the current table against it (accumulator + PSI and
  Jensen-Shannon for every feature + decisions). Also timed as one unit: building the baseline from
  the reference *and* scoring the current table against it, which is the work Evidently does in
  each run (it has no frozen baseline).
* Evidently: ``Report([DataDriftPreset(num_method="psi", cat_method="jensenshannon",
  num_threshold=0.2, cat_threshold=0.1)]).run(current, reference)`` -- the same statistics (PSI on
  numeric, Jensen-Shannon on categorical columns), our default thresholds. Evidently has no frozen
  baseline, so its time includes binning the reference. Its result object is checked: one finite
  ValueDrift per column, and the set of drifted columns is compared with ours.
* Timer: ``time.perf_counter``; every timed step is repeated BENCH_REPS times (the same count on both
  sides) and we report best and median; the ratios use the best of each (medians printed beside).

Last line: ``RESULT drift_vs_evidently=<r> drift_vs_evidently_with_baseline=<r> drift_ms_per_mcell=<ms>
ours_check_ms=<ms> ours_with_baseline_ms=<ms> evidently_ms=<ms> reps=<n>`` -- Evidently's time over our
frozen-baseline check and over our baseline build + check, then the best time of each side.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

ROWS = int(os.environ.get("BENCH_ROWS", "100000"))
N_NUMERIC = 40
N_CATEGORICAL = 10
# one count for every timed step on both sides (Evidently takes tens of seconds per run on 2 cores)
REPS = int(os.environ.get("BENCH_REPS", "5"))
if "BENCH_EVIDENTLY_REPS" in os.environ:
    sys.exit("BENCH_EVIDENTLY_REPS is gone: BENCH_REPS sets the repetitions of both sides")
EVIDENTLY_DEFAULT = os.environ.get("BENCH_EVIDENTLY_DEFAULT", "1") != "0"
SEED = 20261122

NUMERIC = [f"num_{i:02d}" for i in range(N_NUMERIC)]
CATEGORICAL = [f"cat_{i:02d}" for i in range(N_CATEGORICAL)]
# columns made to drift in the current table (clearly, so that both tools must agree)
DRIFTED_NUMERIC = set(NUMERIC[::8])  # 5 columns: shifted by 1 standard deviation
DRIFTED_CATEGORICAL = {CATEGORICAL[0], CATEGORICAL[5]}  # frequencies reshuffled / new categories


def make_tables(rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)

    def numeric(i: int, n: int, shift: float) -> np.ndarray:
        kind = i % 4
        if kind == 0:
            x = rng.normal(10.0 * i, 1.0 + i / 10, n) + shift * (1.0 + i / 10)
        elif kind == 1:
            x = rng.lognormal(0.0, 0.75, n)
            x = x + shift * float(np.std(x))
        elif kind == 2:
            x = rng.integers(0, 12, n).astype(np.float64) + shift * 3.5  # heavy ties
        else:
            x = rng.uniform(-1.0, 1.0, n) + shift * 0.58
        if i % 5 == 0:  # some missing values
            x[rng.random(n) < 0.01] = np.nan
        return x

    def categorical(i: int, n: int, drift: bool) -> np.ndarray:
        k = 4 + 4 * i  # 4 .. 40 categories
        cats = np.array([f"{chr(97 + i)}_{j:03d}" for j in range(k)], dtype=object)
        w = np.linspace(1.0, 3.0, k)
        if drift and i == 0:
            w = w[::-1] ** 3  # frequencies reshuffled
        if drift and i == 5:
            cats = np.concatenate([cats, np.array([f"new_{j}" for j in range(k)], dtype=object)])
            w = np.concatenate([w, w])  # half the rows carry categories unseen in training
        col = rng.choice(cats, n, p=w / w.sum())
        if i % 3 == 0:
            col[rng.random(n) < 0.02] = None
        return col

    def table(drift: bool) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for i, name in enumerate(NUMERIC):
            data[name] = numeric(i, rows, 1.0 if drift and name in DRIFTED_NUMERIC else 0.0)
        for i, name in enumerate(CATEGORICAL):
            data[name] = categorical(i, rows, drift and name in DRIFTED_CATEGORICAL)
        return pd.DataFrame(data)

    return table(False), table(True)


def timed(fn: Callable[[], Any], reps: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def fmt(times: list[float]) -> str:
    return f"best {min(times) * 1e3:10.1f} ms   median {statistics.median(times) * 1e3:10.1f} ms   (n={len(times)})"


def evidently_columns(snapshot: Any) -> dict[str, tuple[str, float, float]]:
    """column -> (method, value, threshold), from the ValueDrift metrics of a snapshot."""
    out: dict[str, tuple[str, float, float]] = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type") == "evidently:metric_v2:ValueDrift":
            out[config["column"]] = (
                str(config["method"]),
                float(metric["value"]),
                float(config["threshold"]),
            )
    return out


def main() -> int:
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    import kubeloop.drift as drift

    cells = ROWS * (N_NUMERIC + N_CATEGORICAL)
    print(
        f"kubeloop.drift vs Evidently DataDriftPreset -- {ROWS} rows x {N_NUMERIC + N_CATEGORICAL} features"
    )
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  pandas {pd.__version__}  "
        f"evidently {evidently.__version__}  cpus {os.cpu_count()}  load {os.getloadavg()[0]:.1f}"
    )
    print(f"kubeloop.drift from {os.path.dirname(drift.__file__)}")

    t0 = time.perf_counter()
    reference, current = make_tables(ROWS, SEED)
    print(f"data generated in {time.perf_counter() - t0:.1f} s")

    # ---- ours -------------------------------------------------------------------------------
    build_times, baseline = timed(lambda: drift.build_baseline(reference, categorical=set(CATEGORICAL)), REPS)
    baseline = drift.Baseline.from_json(baseline.to_json())  # as the checker gets it: from storage
    score_times, result = timed(lambda: drift.score(baseline, current), REPS)
    print(f"ours: baseline build (once, at training)  {fmt(build_times)}")
    print(f"ours: check (score current vs baseline)   {fmt(score_times)}")
    # ours with the baseline built inside the timed unit (in memory, as Evidently holds its reference)
    e2e_times, e2e_result = timed(
        lambda: drift.score(drift.build_baseline(reference, categorical=set(CATEGORICAL)), current), REPS
    )
    print(f"ours: baseline build + check, as one unit  {fmt(e2e_times)}")
    ours_drifted = set(result.drifted_features)
    if set(e2e_result.drifted_features) != ours_drifted:
        print(f"ours: a fresh baseline finds other drifted columns: {sorted(e2e_result.drifted_features)}")
        return 1
    print(
        f"ours: {len(ours_drifted)}/{len(result.features)} features drifted, share {result.share:.2f}, "
        f"dataset drifted={result.drifted}"
    )

    # ---- Evidently --------------------------------------------------------------------------
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)

    def run_evidently(**preset: Any) -> Any:
        report = Report([DataDriftPreset(**preset)])
        return report.run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )

    like = {"num_method": "psi", "cat_method": "jensenshannon", "num_threshold": 0.2, "cat_threshold": 0.1}
    ev_times, snapshot = timed(lambda: run_evidently(**like), REPS)
    t0 = time.perf_counter()
    columns = evidently_columns(snapshot)
    extract = time.perf_counter() - t0
    print(f"evidently: DataDriftPreset(psi / jensenshannon) {fmt(ev_times)}")
    print(f"evidently: reading its result afterwards took {extract * 1e3:.1f} ms (not counted)")

    # the result object really holds the per-column drift we asked for
    expected_methods = {**dict.fromkeys(NUMERIC, "psi"), **dict.fromkeys(CATEGORICAL, "jensenshannon")}
    problems = [
        c
        for c in NUMERIC + CATEGORICAL
        if c not in columns or not math.isfinite(columns[c][1]) or columns[c][0] != expected_methods[c]
    ]
    if problems:
        print(f"evidently result is missing or unexpected for columns {problems}: {columns}")
        return 1
    ev_drifted = {c for c, (_, value, threshold) in columns.items() if value >= threshold}
    truth = DRIFTED_NUMERIC | DRIFTED_CATEGORICAL
    print(
        f"evidently: {len(columns)} ValueDrift results (PSI on {N_NUMERIC}, JS on {N_CATEGORICAL} columns), "
        f"{len(ev_drifted)} drifted"
    )
    print(f"drifted columns -- planted: {sorted(truth)}")
    print(f"  ours == planted: {ours_drifted == truth}   evidently == planted: {ev_drifted == truth}")
    if ours_drifted != truth:
        print(f"  ours differs: {sorted(ours_drifted ^ truth)}")
        return 1
    if ev_drifted != truth:
        print(f"  evidently differs: {sorted(ev_drifted ^ truth)}")

    if EVIDENTLY_DEFAULT:
        default_times, _ = timed(run_evidently, 1)
        print(f"evidently: DataDriftPreset() defaults (for information) {fmt(default_times)}")

    ours_best = min(score_times)
    e2e_best = min(e2e_times)
    ev_best = min(ev_times)
    ratio = ev_best / ours_best
    ratio_e2e = ev_best / e2e_best
    med = statistics.median
    ms_per_mcell = ours_best * 1e3 / (cells / 1e6)
    print(
        f"== summary ({REPS} repetitions of every timed step, load average now {os.getloadavg()[0]:.1f}) =="
    )
    print(
        f"frozen baseline:  ours check best {ours_best * 1e3:.1f} ms vs evidently best {ev_best * 1e3:.1f} ms: "
        f"{ratio:.1f}x (medians {med(score_times) * 1e3:.1f} ms vs {med(ev_times) * 1e3:.1f} ms: "
        f"{med(ev_times) / med(score_times):.1f}x); {ms_per_mcell:.2f} ms per million cells ({cells / 1e6:.1f} M cells)"
    )
    print(
        f"baseline included: ours build + check best {e2e_best * 1e3:.1f} ms vs evidently best "
        f"{ev_best * 1e3:.1f} ms: {ratio_e2e:.1f}x (medians {med(e2e_times) * 1e3:.1f} ms vs "
        f"{med(ev_times) * 1e3:.1f} ms: {med(ev_times) / med(e2e_times):.1f}x)"
    )
    print(
        f"RESULT drift_vs_evidently={ratio:.1f} drift_vs_evidently_with_baseline={ratio_e2e:.1f} "
        f"drift_ms_per_mcell={ms_per_mcell:.2f} ours_check_ms={ours_best * 1e3:.1f} "
        f"ours_with_baseline_ms={e2e_best * 1e3:.1f} evidently_ms={ev_best * 1e3:.1f} reps={REPS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
