"""``mlflow server`` in a single process: ``python -m localcluster.mlflow_server <mlflow server args>``.

The stock command imports MLflow, prepares the stores, then starts uvicorn in a *second* interpreter
that imports MLflow all over again; on a small machine that doubles an already slow start. Here the
command runs unchanged except that its final spawn is replaced by serving the same app, with the same
environment, from this process (one uvicorn worker). If MLflow's internals move, it falls back to
the stock behaviour.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any


class _Finished:
    """Stands in for the Popen object ``_run_server`` expects once the server has stopped."""

    returncode = 0

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def send_signal(self, signum: int) -> None:
        return None


def _serve_in_process(
    cmd: Sequence[str], *, extra_env: Mapping[str, str] | None = None, **_: Any
) -> _Finished:
    import uvicorn

    args = list(cmd)
    if "uvicorn" not in args or "--workers" not in args or args[args.index("--workers") + 1] != "1":
        raise RuntimeError(f"unexpected server command from mlflow: {args}")
    os.environ.update(extra_env or {})
    opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    uvicorn.run(
        args[-1],
        host=opt["--host"],
        port=int(opt["--port"]),
        log_config=opt.get("--log-config"),
        factory="--factory" in args,
    )
    return _Finished()


def main(argv: Sequence[str]) -> int:
    import mlflow.server
    from mlflow.cli import cli

    if callable(getattr(mlflow.server, "_exec_cmd", None)):
        mlflow.server._exec_cmd = _serve_in_process  # type: ignore[attr-defined]  # private, not in mlflow's exports
    cli.main(args=["server", *argv], prog_name="mlflow")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
