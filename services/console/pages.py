"""The console's pages: HTML shells that hold no data. Each page's script fills it from the
REST API with the signed-in key, so a page itself needs no key (nothing in it is secret)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from contracts.jobs import JobKind
from services.store.models import JobState

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
# Served with every page: no framing by other sites, no inline or third-party scripts.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# (path, template, title, the menu's name or None for pages reached by links)
PAGES = [
    ("/", "jobs.html", "Jobs and pipelines", "Jobs"),
    ("/registry", "registry.html", "Datasets and models", "Datasets & models"),
    ("/leaderboard", "leaderboard.html", "Leaderboard", "Leaderboard"),
    ("/ablations", "ablations.html", "Ablations", "Ablations"),
    ("/playground", "playground.html", "Playground", "Playground"),
    ("/rate", "rate.html", "Rate completions", "Rate"),
    ("/admin", "admin.html", "Keys and team limits", "Admin"),
    ("/signin", "signin.html", "Sign in", None),
]
MENU = [(f"/console{path}".rstrip("/") + ("/" if path == "/" else ""), name)
        for path, _, _, name in PAGES if name]  # fmt: skip


def _render(request: Request, template: str, title: str, **context: object) -> HTMLResponse:
    response = templates.TemplateResponse(
        request,
        template,
        {
            "title": title,
            "menu": MENU,
            "path": request.url.path,
            "states": [s.value for s in JobState],
            "kinds": [k.value for k in JobKind],
            **context,
        },
    )
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(template: str, title: str) -> Callable[[Request], HTMLResponse]:
    def page(request: Request) -> HTMLResponse:
        return _render(request, template, title)

    return page


for _path, _template, _title, _ in PAGES:
    router.add_api_route(_path, _page(_template, _title), methods=["GET"])


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> HTMLResponse:
    return _render(request, "job.html", f"Job {job_id}", job_id=job_id)


def _artifact_page(plural: str) -> Callable[[Request, str], HTMLResponse]:
    category = plural.removesuffix("s")

    def page(request: Request, artifact_id: str) -> HTMLResponse:
        """A dataset or model, its evaluations and its lineage drawn as a graph."""
        return _render(
            request, "artifact.html", f"{category.title()} {artifact_id}", plural=plural,
            category=category, artifact_id=artifact_id,
        )  # fmt: skip

    return page


for _plural in ("datasets", "models"):
    router.add_api_route(f"/{_plural}/{{artifact_id}}", _artifact_page(_plural), methods=["GET"])
