"""Ray's cluster token: found where Ray looks for it, created for the embedded head, checked early.

Ray 2.60 turns token authentication on by default, but ``ray start --head`` refuses to start
when no token exists, and a remote head answers 401 to a client without one. The control plane
therefore settles the token before it starts anything:

- a token the user already has is used as is, from where Ray itself reads it, in Ray's order:
  ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` names, ``~/.ray/auth_token``;
- with none, and only when llmforge starts its own head, a new one is written (0600) to
  ``$LLMFORGE_HOME/ray/auth_token`` and ``RAY_AUTH_TOKEN_PATH`` is passed to everything that
  the control plane starts (the head, and through it every job), so they all share it;
- a token file that cannot be read, is empty, or is open to other users is an error naming
  the file, raised before any job is submitted; only Ray's default file, which Ray itself writes
  world-readable, is made private in place when it is this user's and no one else could write it.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import httpx

TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# Where the control plane keeps a token it made itself, relative to LLMFORGE_HOME.
OWN_TOKEN_FILE = Path("ray") / "auth_token"
log = logging.getLogger("llmforge.ray")


class RayTokenError(RuntimeError):
    """The Ray token cannot be used; the message names the file or variable to fix."""


@dataclass(frozen=True)
class RayToken:
    value: str
    # Where it came from, for messages: an environment variable's name or a file's path.
    origin: str
    # The file it lives in (None when it came from RAY_AUTH_TOKEN itself).
    path: Path | None = None

    def env(self) -> dict[str, str]:
        """What a child process needs to find the same token."""
        return {TOKEN_PATH_ENV: str(self.path)} if self.path else {TOKEN_ENV: self.value}

    @property
    def header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def read_token_file(path: Path, origin: str, *, tighten: bool = False) -> RayToken:
    """The token in ``path``, refusing a file others can read or one that holds nothing.

    With ``tighten``, a file of this user's that others may only read is made private instead
    (Ray's own ``ray.init()`` writes ``~/.ray/auth_token`` with the umask's 0644); a file others
    may write is refused all the same, since making it private now would not undo a change.
    """
    try:
        info = path.stat()
        value = path.read_text().strip()
    except OSError as e:
        raise RayTokenError(f"cannot read the Ray token file {path} ({origin}): {e}") from e
    mode = info.st_mode
    open_to_others = mode & (stat.S_IRWXG | stat.S_IRWXO)
    others_write = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if tighten and open_to_others and not others_write and info.st_uid == os.getuid():
        path.chmod(0o600)
        log.warning("made the Ray token file %s private (it was %04o)", path, mode & 0o777)
        mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RayTokenError(
            f"the Ray token file {path} ({origin}) has mode {stat.S_IMODE(mode):04o}: anyone on "
            f"this machine could read it and run code on the cluster; chmod 600 {path}"
        )
    if not value:
        raise RayTokenError(f"the Ray token file {path} ({origin}) is empty")
    return RayToken(value=value, origin=str(path), path=path)


def find_token() -> RayToken | None:
    """The user's own token, in Ray's order of lookup, or None when there is none."""
    if value := os.environ.get(TOKEN_ENV, "").strip():
        return RayToken(value=value, origin=TOKEN_ENV)
    if named := os.environ.get(TOKEN_PATH_ENV):
        path = Path(named).expanduser()
        if not path.exists():
            raise RayTokenError(f"{TOKEN_PATH_ENV} names {path}, which does not exist")
        return read_token_file(path, TOKEN_PATH_ENV)
    default = default_token_path()
    if not default.exists():
        return None
    return read_token_file(default, "Ray's default token file", tighten=True)


def ensure_token(home: Path) -> RayToken:
    """The token for a head llmforge starts itself: the user's, or one kept in ``home``."""
    found = find_token()
    if found is not None:
        return found
    path = (home / OWN_TOKEN_FILE).resolve()
    if path.exists():
        return read_token_file(path, "llmforge's own Ray token")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_EXCL with mode 0600: the token is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    return read_token_file(path, "llmforge's own Ray token")


def check_access(dashboard_url: str, token: RayToken | None, *, address_env: str) -> None:
    """Fail early when the Ray cluster at ``dashboard_url`` refuses this token (or its absence).

    An unreachable cluster is left to the scheduler, which retries; a refusal will not mend.
    """
    try:
        r = httpx.get(
            f"{dashboard_url}/api/jobs/", headers=token.header if token else None, timeout=10
        )
    except httpx.HTTPError:
        return
    if r.status_code not in (401, 403):
        return
    if token is None:
        raise RayTokenError(
            f"the Ray cluster at {address_env} ({dashboard_url}) requires a token and none was "
            f"found: set {TOKEN_ENV}, or {TOKEN_PATH_ENV} to a file holding it, or write it to "
            f"{default_token_path()}"
        )
    raise RayTokenError(
        f"the Ray cluster at {address_env} ({dashboard_url}) refused the token from "
        f"{token.origin} (HTTP {r.status_code}); use the cluster's own token"
    )
