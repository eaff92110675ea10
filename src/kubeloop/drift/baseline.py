"""The frozen training baseline: its JSON format (a contract) and how it is built.

A baseline is written once by the trainer next to the model (``models/<name>/<version>/baseline.json``)
and read by every drift check, so drift results are reproducible. The JSON is produced by
:meth:`Baseline.to_json` and read by :meth:`Baseline.from_json`; a round trip is byte-identical.

Bucket layout (the order of ``counts`` and of the current counts reported by a drift check):

numeric
    ``len(edges) + 1`` value buckets, right-closed: bucket ``i`` holds ``edges[i-1] < v <= edges[i]``
    with ``edges[-1] = -inf`` and ``edges[len(edges)] = +inf``; then the missing bucket
    (``missingCount``: NaN, None, null). The edges are
    ``[nextafter(min, -inf), q(1/bins), ..., q((bins-1)/bins), max]`` over the finite training values,
    de-duplicated: so the first bucket is *below the training range* and the last *above* it (both
    with a reference count of 0), and in between are up to ``bins`` quantile bins. Ties collapse
    bins (a value that fills several quantiles gets one bin); a constant column ``c`` gets the three
    buckets ``< c``, ``= c`` and ``> c``. Infinite values count in the outer buckets.

categorical
    one bucket per training category (``categories``, sorted by code point), then the *unseen*
    bucket (categories not seen in training; reference count 0 by construction), then missing.
    Values are compared by their canonical string form (see :func:`kubeloop.drift.category_key`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kubeloop.drift import _columns
from kubeloop.drift.errors import BaselineError, DriftInputError, MissingFeatureError

SCHEMA_VERSION = 1
"""Version of the baseline JSON format written by this module (``schemaVersion``)."""

DEFAULT_BINS = 10
MAX_BINS = 1000
MAX_ROWS = 2**63 - 1
"""Counts are scored as int64; every count is at most ``rowCount`` (they add up to it)."""

FeatureKind = Literal["numeric", "categorical"]


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


class NumericFeature(_Model):
    """Reference distribution of a numeric feature over frozen quantile bins."""

    kind: Literal["numeric"] = "numeric"
    edges: list[float] = Field(description="Strictly increasing, finite bucket edges (right-closed bins).")
    counts: list[Annotated[int, Field(ge=0)]] = Field(
        description="Reference row count per value bucket (len(edges) + 1 buckets)."
    )
    frequencies: list[float] = Field(description="counts / rowCount, for readers of the JSON.")
    missing_count: int = Field(ge=0, description="Reference rows with a missing value.")
    missing_frequency: float = Field(description="missingCount / rowCount.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if any(not math.isfinite(e) for e in self.edges):
            raise ValueError("edges must be finite")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly increasing")
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"expected {len(self.edges) + 1} counts for {len(self.edges)} edges")
        if len(self.frequencies) != len(self.counts):
            raise ValueError("frequencies and counts differ in length")
        return self

    def reference_counts(self) -> list[int]:
        """Reference counts in bucket order: value buckets, then missing."""
        return [*self.counts, self.missing_count]


class CategoricalFeature(_Model):
    """Reference distribution of a categorical feature over its training categories."""

    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(description="Training categories, unique and sorted by code point.")
    counts: list[Annotated[int, Field(ge=0)]] = Field(description="Reference row count per category.")
    frequencies: list[float] = Field(description="counts / rowCount, for readers of the JSON.")
    unseen_count: Literal[0] = Field(
        0, description="Unseen-category bucket; always 0 in the reference (present for the layout)."
    )
    missing_count: int = Field(ge=0, description="Reference rows with a missing value.")
    missing_frequency: float = Field(description="missingCount / rowCount.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.categories != sorted(set(self.categories)):
            raise ValueError("categories must be unique and sorted")
        if len(self.counts) != len(self.categories):
            raise ValueError("counts and categories differ in length")
        if len(self.frequencies) != len(self.counts):
            raise ValueError("frequencies and counts differ in length")
        return self

    def reference_counts(self) -> list[int]:
        """Reference counts in bucket order: categories, then unseen (0), then missing."""
        return [*self.counts, 0, self.missing_count]


FeatureBaseline = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


class Baseline(_Model):
    """Frozen per-feature reference distributions of a training table (the baseline contract)."""

    schema_version: int = Field(SCHEMA_VERSION, description="Version of this format.")
    row_count: int = Field(
        ge=1, le=MAX_ROWS, description="Rows of the training table the baseline was built from."
    )
    bins: int = Field(
        ge=2, le=MAX_BINS, description="Requested number of quantile bins for numeric features."
    )
    features: dict[str, FeatureBaseline] = Field(min_length=1, description="Per-feature reference, by name.")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Free-form provenance (model name/version, MLflow run id, ...)."
    )

    @model_validator(mode="before")
    @classmethod
    def _check_version(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            version = data.get("schemaVersion", data.get("schema_version", SCHEMA_VERSION))
            # type(): JSON true would pass as 1, and 1.0 is no version this module writes either
            if type(version) is not int or version != SCHEMA_VERSION:
                raise ValueError(
                    f"unsupported baseline schemaVersion {version!r}; this kubeloop reads version {SCHEMA_VERSION}"
                )
        return data

    @model_validator(mode="after")
    def _check_totals(self) -> Self:
        for name, feature in self.features.items():
            total = sum(feature.counts) + feature.missing_count
            if total != self.row_count:
                raise ValueError(f"feature {name!r}: counts add up to {total}, rowCount is {self.row_count}")
            expected = [c / self.row_count for c in feature.counts]
            if any(abs(f - e) > 1e-12 for f, e in zip(feature.frequencies, expected, strict=True)) or (
                abs(feature.missing_frequency - feature.missing_count / self.row_count) > 1e-12
            ):
                raise ValueError(f"feature {name!r}: frequencies do not match counts / rowCount")
        return self

    def to_json(self) -> str:
        """Stable JSON (camelCase keys, fixed key order, shortest round-trip floats, 2-space indent)."""
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, data: str | bytes) -> Baseline:
        """Parse and validate a baseline document; raises :class:`BaselineError` if invalid."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise BaselineError(f"invalid baseline: {exc}") from exc


# --------------------------------------------------------------------------------------------
# building


def _numeric_feature(name: str, column: object, bins: int) -> NumericFeature:
    x = _columns.numeric_values(name, column)
    finite = x[np.isfinite(x)]
    edges: npt.NDArray[np.float64]
    if finite.size:
        lo = float(finite.min())
        quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:])
        candidates = np.concatenate(([np.nextafter(lo, -np.inf)], quantiles, [float(finite.max())]))
        edges = np.unique(candidates[np.isfinite(candidates)])
    else:
        edges = np.empty(0, dtype=np.float64)
    counts = _columns.numeric_counts(x, edges)
    n = int(x.shape[0])
    values = [int(c) for c in counts[:-1].tolist()]
    return NumericFeature(
        edges=[float(e) for e in edges.tolist()],
        counts=values,
        frequencies=[c / n for c in values],
        missing_count=int(counts[-1]),
        missing_frequency=int(counts[-1]) / n,
    )


def _categorical_feature(name: str, column: object) -> CategoricalFeature:
    keys, counts = _columns.value_counts(name, column)
    merged: dict[str, int] = {}
    missing = 0
    for raw, count in zip(keys, counts, strict=True):
        key = _columns.category_key(raw)
        if key is None:
            missing += count
        else:
            merged[key] = merged.get(key, 0) + count
    categories = sorted(merged)
    n = sum(counts)
    values = [merged[c] for c in categories]
    return CategoricalFeature(
        categories=categories,
        counts=values,
        frequencies=[c / n for c in values],
        missing_count=missing,
        missing_frequency=missing / n,
    )


def _infer_categorical(column: object) -> bool:
    """Numeric (int/uint/float) dtypes are numeric; strings, objects, booleans, categoricals are not."""
    dtype = getattr(column, "dtype", None)
    if dtype is None:
        pa_type = getattr(column, "type", None)
        if pa_type is not None:  # pyarrow
            text = str(pa_type)
            return not (text.startswith(("int", "uint", "float", "double", "halffloat", "decimal")))
        try:
            dtype = np.asarray(column).dtype
        except (ValueError, TypeError):
            return True
    return getattr(dtype, "kind", "O") not in "iuf"


def build_baseline(
    columns: object,
    categorical: Iterable[str] | None = None,
    bins: int = DEFAULT_BINS,
    *,
    features: Iterable[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Baseline:
    """Build the frozen baseline of a training table.

    Args:
        columns: the training features: a mapping of name to 1-D array-like, a pandas DataFrame or a
            pyarrow Table.
        categorical: names of the categorical features. ``None`` infers them: integer and float
            columns are numeric, everything else (strings, objects, booleans, pandas categoricals) is
            categorical. When given, every other feature is numeric and must hold numbers.
        bins: number of quantile bins per numeric feature (2..1000).
        features: the features to include, in this order (default: every column of the table).
        metadata: provenance to store with the baseline (model name/version, run id, ...).

    Raises:
        MissingFeatureError: a name in ``features`` or ``categorical`` is not a column.
        DriftInputError: a column is unusable (names the feature).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an integer between 2 and {MAX_BINS}, got {bins!r}")
    table = _columns.Table(columns)
    names = list(table.names) if features is None else list(features)
    if not names:
        raise ValueError("no features to build a baseline from")
    if len(set(names)) != len(names):
        raise ValueError("features must not repeat")
    table.require(names, "the training data")
    declared: set[str] | None = None
    if categorical is not None:
        declared = {categorical} if isinstance(categorical, str) else set(categorical)
        unknown = sorted(declared - set(names))
        if unknown:
            raise MissingFeatureError(
                unknown, "the features given to build the baseline (declared categorical)"
            )

    data = {name: table.get(name) for name in names}
    rows = _columns.check_lengths({name: _columns.column_length(name, col) for name, col in data.items()})
    if rows == 0:
        raise DriftInputError(names[0], "the training data has no rows")
    built: dict[str, NumericFeature | CategoricalFeature] = {}
    for name, column in data.items():
        is_cat = _infer_categorical(column) if declared is None else name in declared
        built[name] = _categorical_feature(name, column) if is_cat else _numeric_feature(name, column, bins)
    return Baseline(row_count=rows, bins=bins, features=built, metadata=dict(metadata or {}))
