"""`flowq api`: the HTTP API served by uvicorn, configured by the FLOWQ_* variables."""

from __future__ import annotations

import uvicorn

from flowq.api.app import create_api


def serve(host: str, port: int) -> None:
    """Serve the API until interrupted (one process: an embedded worker lives in it)."""
    app = create_api()
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True)
