"""Running the control plane under uvicorn, in the foreground or in a background thread."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from services.api.app import create_app
from services.auth import ADMIN_KEY_FILE
from services.settings import Settings


def serve(settings: Settings) -> None:
    if settings.api_workers > 1:
        # Processes of their own (a factory each builds its app from the same environment), so
        # requests use every core rather than one interpreter's GIL.
        uvicorn.run(
            "services.api.app:create_app",
            factory=True,
            workers=settings.api_workers,
            host=settings.api_host,
            port=settings.api_port,
            log_level="info",
        )
        return
    uvicorn.run(
        create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info"
    )


class BackgroundServer:
    """The control plane in a thread of this process (the demo and the tests use it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        config = uvicorn.Config(
            create_app(settings),
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            # the host process (the demo, a test) owns logging: uvicorn's dictConfig would close
            # every handler the process made, a library's handler on a captured stream included
            log_config=None,
        )
        self.app = config.app
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="llmforge-api", daemon=True)

    @property
    def headers(self) -> dict[str, str]:
        """The admin key the control plane wrote at its first start, as a request header."""
        path = self.settings.home / ADMIN_KEY_FILE
        if not self.settings.auth or not path.is_file():
            return {}
        return {"Authorization": f"Bearer {path.read_text().strip()}"}

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start(self, timeout_s: float = 120) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError("the control plane exited during start-up; see the log above")
            try:
                if httpx.get(f"{self.url}/api/v1/health/live", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the control plane did not answer at {self.url} in {timeout_s:.0f}s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=90)
