"""``kubeloop-api``: serve the REST facade with uvicorn (settings from ``KUBELOOP_API_*``)."""

from __future__ import annotations

import uvicorn

from kubeloop_api import logconfig
from kubeloop_api.app import create_app
from kubeloop_api.settings import ApiSettings


def main() -> None:
    settings = ApiSettings()
    logconfig.configure(settings.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
