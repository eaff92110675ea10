"""The prediction logs of a window, scored part by part with bounded memory.

The server writes ``predictions/<namespace>/<deployment>/<modelVersion>/<YYYY-MM-DD>/<part>.parquet``
(:func:`kubeloop.contracts.predictions_part`). A check lists the day folders the window touches,
leaves out parts last written before the window starts (none of their rows can be in it), and reads
the others one at a time, in batches of ``batch_rows`` rows of the baseline's features only: memory
holds one part (or, past ``max_memory_part_bytes``, a spooled file and one batch), never the window.
Rows outside the window (older than its start, or logged after the check's time by a part flushed
while it runs) are filtered by their ``_timestamp`` (a timestamp, or ISO 8601 text as another tool may
write it; text without a zone is UTC).

A part that cannot be scored is skipped and counted, and the rest are scored: a corrupt Parquet file
(``CorruptPart``), a baseline feature missing from it (``FeatureMissing``), in it twice
(``FeatureAmbiguous``) or of a type the feature cannot have (``FeatureWrongType``), or a
``_timestamp`` that places no row in time (``TimestampWrongType``: epoch numbers of no known unit,
text that is no time). Each part is counted into its own accumulator and merged only when
all of it was read, so a part that fails halfway adds nothing.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kubeloop.contracts import PREDICTION_LOG_TIMESTAMP, ObjectRef
from kubeloop.drift import Baseline, CategoricalFeature, DriftAccumulator, DriftError
from kubeloop.storage import ObjectInfo, ObjectNotFoundError, ObjectStore, StorageError, folder
from kubeloop_operator.status.driftmonitor import CheckProblem

log = logging.getLogger("kubeloop_operator.driftcheck")

PARQUET_SUFFIX: Final = ".parquet"
DEFAULT_BATCH_ROWS: Final = 65_536
DEFAULT_MAX_MEMORY_PART_BYTES: Final = 64 * 1024 * 1024


def days(start: datetime, end: datetime) -> list[date]:
    """Every UTC day from ``start`` to ``end`` (both included)."""
    out: list[date] = []
    d = start.date()
    while d <= end.date():
        out.append(d)
        d += timedelta(days=1)
    return out


def window_parts(store: ObjectStore, prefix: ObjectRef, start: datetime, end: datetime) -> list[ObjectInfo]:
    """The Parquet parts under ``prefix`` (``predictions/<ns>/<deployment>/<version>``) that can hold
    rows of ``[start, end]``, in key order (the server's part names start with their write time)."""
    out: list[ObjectInfo] = []
    for day in days(start, end):
        for info in store.list(folder(prefix.child(day.isoformat()))):
            if not info.ref.key.endswith(PARQUET_SUFFIX):
                continue
            if info.last_modified is not None and info.last_modified < start:
                continue  # written before the window: every row in it is older
            out.append(info)
    return out


_NUMERIC_CHECKS: Final = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_decimal,
    pa.types.is_null,
)
_CATEGORICAL_CHECKS: Final = (
    *_NUMERIC_CHECKS,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
)


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def schema_problem(uri: str, schema: pa.Schema, baseline: Baseline) -> CheckProblem | None:
    """Why a part's columns cannot be scored against ``baseline``, or None."""
    names = set(schema.names)
    missing = [n for n in baseline.features if n not in names]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (" …" if len(missing) > 5 else "")
        return CheckProblem(
            "FeatureMissing", f"{uri}: feature(s) {shown} of the baseline missing from the log"
        )
    for name, feature in baseline.features.items():
        if len(schema.get_all_field_indices(name)) > 1:
            # Parquet allows a name twice (two writers' columns concatenated); which one is the
            # feature cannot be told, and pyarrow refuses to pick one.
            return CheckProblem(
                "FeatureAmbiguous", f"{uri}: feature {name!r} is more than one column of the log"
            )
        t = _value_type(schema.field(name).type)
        categorical = isinstance(feature, CategoricalFeature)
        ok = any(check(t) for check in (_CATEGORICAL_CHECKS if categorical else _NUMERIC_CHECKS))
        if not ok:
            kind = "categorical" if categorical else "numeric"
            return CheckProblem(
                "FeatureWrongType", f"{uri}: feature {name!r} is {t} in the log, but {kind} in the baseline"
            )
    return None


class SpoolError(Exception):
    """A part could not be spooled to the check's own disk (no such directory, full, read-only): the
    logs are not at fault, and a window scored without that part would not be honest."""


def timestamp_problem(uri: str, schema: pa.Schema) -> CheckProblem | None:
    """Why a part's ``_timestamp`` cannot place its rows in a window (a timestamp or ISO 8601 text
    can), or None (also when there is none: the server's parts always have one)."""
    found = schema.get_all_field_indices(PREDICTION_LOG_TIMESTAMP)
    if not found:
        return None
    if len(found) > 1:
        return CheckProblem(
            "TimestampWrongType", f"{uri}: column {PREDICTION_LOG_TIMESTAMP!r} is in the log more than once"
        )
    t = _value_type(schema.field(found[0]).type)
    if pa.types.is_timestamp(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        return None
    return CheckProblem(
        "TimestampWrongType",
        f"{uri}: column {PREDICTION_LOG_TIMESTAMP!r} is {t}, which places no row in the window "
        "(a timestamp or ISO 8601 text is needed)",
    )


class TimestampError(ValueError):
    """A ``_timestamp`` text that is no ISO 8601 time."""


@dataclass
class Scored:
    """What scoring the parts of a window gave."""

    accumulator: DriftAccumulator
    parts: int = 0
    rows_read: int = 0
    skipped: list[CheckProblem] = field(default_factory=list)


class PartReader:
    """Opens one part for batch iteration: in memory up to ``max_memory_part_bytes``, else spooled
    to a temporary file (deleted once read), so a huge part never sits in memory whole."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        max_memory_part_bytes: int = DEFAULT_MAX_MEMORY_PART_BYTES,
        spool_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.max_memory_part_bytes = max_memory_part_bytes
        self.spool_dir = spool_dir

    def open(self, info: ObjectInfo) -> tuple[pq.ParquetFile, Path | None]:
        """The part as a ParquetFile (and the spool file to delete, if any). Raises StorageError, or
        SpoolError when the spool file cannot be made."""
        if info.size > self.max_memory_part_bytes:
            try:
                fd, name = tempfile.mkstemp(suffix=PARQUET_SUFFIX, dir=self.spool_dir)
                os.close(fd)
            except OSError as e:
                where = self.spool_dir or tempfile.gettempdir()
                raise SpoolError(
                    f"cannot spool {info.ref.uri} ({info.size} bytes) to {where} "
                    f"(KUBELOOP_DRIFTCHECK_SPOOL_DIR): {e}"
                ) from e
            path = Path(name)
            try:
                self.store.get_file(info.ref, path)
                return pq.ParquetFile(path, memory_map=False), path
            except BaseException:
                path.unlink(missing_ok=True)
                raise
        return pq.ParquetFile(pa.BufferReader(self.store.get(info.ref))), None

    def batches(self, pf: pq.ParquetFile, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
        yield from pf.iter_batches(batch_size=self.batch_rows, columns=list(columns), use_threads=False)


def _parse_times(text: Any) -> Any:
    """ISO 8601 text as timestamps: with a zone or offset, or without one (then UTC)."""
    try:
        return pc.cast(text, pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        pass
    try:
        return pc.cast(text, pa.timestamp("us"))
    except pa.ArrowInvalid as e:
        raise TimestampError(
            f"column {PREDICTION_LOG_TIMESTAMP!r} holds text that is no ISO 8601 time: {_short(e)}"
        ) from e


def _in_window(batch: pa.RecordBatch, start: datetime, end: datetime | None = None) -> pa.RecordBatch | None:
    """The rows of ``batch`` from ``start`` to ``end`` (all of them when it has no timestamp column)."""
    idx = batch.schema.get_field_index(PREDICTION_LOG_TIMESTAMP)
    if idx < 0:
        return batch
    ts: Any = batch.column(idx)
    if pa.types.is_dictionary(ts.type):
        ts = ts.dictionary_decode()
    if not pa.types.is_timestamp(ts.type):
        ts = _parse_times(ts)

    def bound(t: datetime) -> Any:
        return pa.scalar(t, type=pa.timestamp(ts.type.unit, tz=ts.type.tz or "UTC")).cast(ts.type)

    lo, hi = pc.min(ts), pc.max(ts)
    if (
        lo.is_valid
        and pc.greater_equal(lo, bound(start)).as_py()
        and (end is None or pc.less_equal(hi, bound(end)).as_py())
    ):
        return batch
    # A row without a time counts as in the window. (pyarrow-stubs type fill_null's result as object.)
    inside: Any = pc.greater_equal(ts, bound(start))
    if end is not None:
        inside = pc.and_(inside, pc.less_equal(ts, bound(end)))
    keep: Any = pc.fill_null(inside, True)
    kept = batch.filter(keep)
    return kept if kept.num_rows else None


def score_parts(
    reader: PartReader,
    parts: Sequence[ObjectInfo],
    baseline: Baseline,
    start: datetime,
    end: datetime | None = None,
) -> Scored:
    """Count every part of the window (rows from ``start`` to ``end``) into one accumulator; unreadable
    parts are skipped and named.
    Storage errors other than a part vanishing propagate (the store is down: no honest result), and
    so does a :class:`SpoolError` (the check's own disk failed, not the part)."""
    out = Scored(DriftAccumulator(baseline))
    features = list(baseline.features)
    for info in parts:
        uri = info.ref.uri
        spool: Path | None = None
        try:
            try:
                pf, spool = reader.open(info)
            except ObjectNotFoundError:
                log.info("part %s is gone (deleted while the check ran); not counted", uri)
                continue
            schema = pf.schema_arrow
            problem = schema_problem(uri, schema, baseline) or timestamp_problem(uri, schema)
            if problem is not None:
                out.skipped.append(problem)
                continue
            columns = features + (
                [PREDICTION_LOG_TIMESTAMP] if PREDICTION_LOG_TIMESTAMP in schema.names else []
            )
            part = out.accumulator.fresh()
            rows = 0
            for batch in reader.batches(pf, columns):
                rows += batch.num_rows
                kept = _in_window(batch, start, end)
                if kept is not None:
                    part.update(kept)
            out.accumulator.merge(part)
            out.parts += 1
            out.rows_read += rows
        except (StorageError, SpoolError):
            raise
        except DriftError as e:
            out.skipped.append(CheckProblem("FeatureWrongType", f"{uri}: {e}"))
        except TimestampError as e:
            out.skipped.append(CheckProblem("TimestampWrongType", f"{uri}: {e}"))
        except (pa.ArrowException, OSError, ValueError) as e:
            out.skipped.append(
                CheckProblem("CorruptPart", f"{uri}: not a readable Parquet file: {_short(e)}")
            )
        finally:
            if spool is not None:
                spool.unlink(missing_ok=True)
    return out


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__
