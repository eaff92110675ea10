"""``kubeloop-trainer``: train one TrainingJob (configuration from the environment and arguments).

Exit codes: 0 success, 2 invalid configuration, 10-29 dataset problems, 30+ infrastructure
(see :mod:`kubeloop_trainer.errors`); 1 is a bug. The final TrainingSummary (or TrainingFailure)
is written as JSON to the termination message file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, TextIO

from kubeloop.contracts import TrainingFailure
from kubeloop.storage import StorageError as ObjectStoreError
from kubeloop_trainer.errors import ConfigError, StorageError, TrainerError

TERMINATION_LOG_ENV = "KUBELOOP_TRAINER_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MAX_BYTES = 4096  # the kubelet keeps this much of a container's termination message


def write_termination(message: str, path: str | None = None) -> None:
    """Write the termination message; silently skipped where the file cannot be written."""
    target = Path(path or os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    try:
        with open(target, "w", encoding="utf-8") as f:
            f.write(message[:4096])
    except OSError:
        pass


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Logs to whatever ``sys.stderr`` is at the time of the record (robust to redirection)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubeloop-trainer",
        description="Train a TrainingJob's model. Every option also reads KUBELOOP_TRAINER_<NAME>.",
    )
    p.add_argument("--spec", help="TrainingJob spec as JSON, or @path to a JSON file")
    p.add_argument("--namespace", help="TrainingJob namespace")
    p.add_argument("--name", help="TrainingJob name")
    p.add_argument("--uid", help="TrainingJob UID (checkpoint identity)")
    p.add_argument("--termination-log", help="termination message file")
    return p


def _is_local_main() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    overrides: dict[str, str] = {}
    try:
        if args.spec:
            overrides["spec"] = Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec
    except OSError as e:
        return _fail(ConfigError(f"--spec {args.spec}: {e.strerror}"), args.termination_log)
    except UnicodeDecodeError as e:
        return _fail(
            ConfigError(f"--spec {args.spec}: not UTF-8 text ({e.reason} at byte {e.start})"),
            args.termination_log,
        )
    for key in ("namespace", "name", "uid", "termination_log"):
        value = getattr(args, key)
        if value:
            overrides[key] = value
    term = args.termination_log
    try:
        from kubeloop_trainer.app import run
        from kubeloop_trainer.settings import load_settings

        settings = load_settings(overrides)
        term = str(settings.termination_log)
        summary = run(settings)
    except TrainerError as e:
        return _fail(e, term)
    except ObjectStoreError as e:  # the core's storage errors carry no exit code: they get ours here
        return _fail(StorageError(str(e)), term)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        traceback.print_exc()
        err = TrainerError(f"internal error: {type(e).__name__}: {e}")
        return _fail(err, term)
    if summary is not None:
        text = summary.model_dump_json(by_alias=True)
        print(text, flush=True)
        write_termination(text, term)
    return 0


def _fail(err: TrainerError, term: str | None) -> int:
    print(f"kubeloop-trainer: {err.reason}: {err.message}", file=sys.stderr, flush=True)
    if _is_local_main():
        write_termination(failure_json(err.failure()), term)
    return err.exit_code


def failure_json(failure: TrainingFailure, limit: int = TERMINATION_MAX_BYTES) -> str:
    """``failure`` as JSON of at most ``limit`` UTF-8 bytes, its message shortened (ending in "…") where
    needed: cut anywhere else, the JSON would not parse and the operator would lose the reason."""
    text = failure.model_dump_json(by_alias=True)
    if len(text.encode()) <= limit:
        return text
    message = failure.message
    lo, hi = 0, len(message)  # the longest prefix that fits: lo fits, hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        shorter = failure.model_copy(update={"message": message[:mid] + "…"})
        if len(shorter.model_dump_json(by_alias=True).encode()) <= limit:
            lo = mid
        else:
            hi = mid
    return failure.model_copy(update={"message": message[:lo] + "…"}).model_dump_json(by_alias=True)


if __name__ == "__main__":
    sys.exit(main())
