"""Mount the console on an app: its pages, its own scripts and styles, and the npm assets."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.console import data, pages
from services.console.settings import ConsoleSettings

log = logging.getLogger("llmforge.console")
HERE = Path(__file__).parent
# The npm packages the console serves (their ``dist`` folders only), and the files it loads.
VENDOR_FILES = {"uplot": ("uPlot.iife.min.js", "uPlot.min.css")}


def vendor_dir() -> Path:
    """Where ``npm ci`` put the console's packages: ``LLMFORGE_CONSOLE_VENDOR`` (the image sets
    it), else ``node_modules`` beside this file (a checkout after ``scripts/dev.sh``)."""
    return Path(ConsoleSettings().vendor or HERE / "node_modules")


def missing_vendor_files(root: Path) -> list[str]:
    return [
        f"{package}/dist/{name}"
        for package, names in VENDOR_FILES.items()
        for name in names
        if not (root / package / "dist" / name).is_file()
    ]


def mount_console(app: FastAPI) -> None:
    app.state.console = ConsoleSettings()
    root = vendor_dir()
    missing = missing_vendor_files(root)
    if missing:  # the pages still work; their charts say what is missing
        log.warning(
            "console: %s missing under %s; run `npm ci` in services/console (scripts/dev.sh does)",
            ", ".join(missing),
            root,
        )
    # The API and the files first: the pages' routes have path parameters.
    app.include_router(data.router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    for package in VENDOR_FILES:
        dist = root / package / "dist"
        if dist.is_dir():
            app.mount(f"/console/vendor/{package}", StaticFiles(directory=dist), name=package)
    app.include_router(pages.router)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/console/")
