"""The web console: pages served by the control plane's own FastAPI app under ``/console``.

The pages are server-rendered shells (Jinja2); the browser fills them from the same REST API
(``/api/v1``) with the API key the user signed in with, kept in the tab's ``sessionStorage`` and
sent as ``Authorization: Bearer``. So the console has no powers of its own: what a key may not do
through the API (a read-only key cancelling a job: 403), it may not do here either. Third-party
front-end code (uPlot) comes from the npm registry, pinned by ``package-lock.json`` beside this
file, installed by ``scripts/dev.sh`` into ``node_modules`` and served by the app (no CDN).
"""

from services.console.mount import mount_console

__all__ = ["mount_console"]
