"""Storage roots: where a job may read and write, checked on both sides of the Ray boundary.

The control plane checks every URI of a spec against the submitting team's roots before it
accepts a job (``services.roots``), and the job checks them again before it runs
(``ray_jobs.entrypoint``), from the roots the scheduler put in its environment. Pure functions,
no FastAPI: both sides import this module.

A URI is normalised before it is compared, and refused when it cannot be normalised safely:

- local paths: ``file://`` stripped; percent escapes (``%2e%2e``), control characters,
  backslashes and look-alikes of ``/`` and ``.`` (U+2215, U+FF0E, U+2024…) refused; the path
  must be absolute and unchanged by Unicode NFKC normalisation; then ``os.path.realpath``, so
  a symlink inside a root that points outside it is outside;
- ``s3://bucket/key``: a valid bucket name, no empty, ``.`` or ``..`` key segments.

A URI is under a root when it equals it or continues it by whole segments:
``s3://b/teams/red`` holds ``s3://b/teams/red/x`` but not ``s3://b/teams/redder``.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.spec_base import UriPaths, looks_like_path, values_at

# The job's environment: JSON lists of the roots it may read and write.
ENV_READ_ROOTS = "LLMFORGE_READ_ROOTS"
ENV_WRITE_ROOTS = "LLMFORGE_WRITE_ROOTS"

READ, WRITE = "read", "write"

# Characters that look like, or NFKC-normalise to, a path separator or a dot.
LOOKALIKES = frozenset(
    "\u2215\u2044\u29f8\u29f5\u2571\u2fbb\u3033\uff0f\u1735\u2cc6\u30ce\u31d3\u4e3f"  # slashes
    "\uff0e\u2024\u2025\u2026\ufe52\u3002\uff61\u0701\u0702\ua4f8\ua60e\u06d4\u2e33"  # dots
    "\uff3c\u29f9\ufe68"  # backslashes
)
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class RootError(ValueError):
    """A URI that cannot be normalised safely, or that lies outside the allowed roots."""


@dataclass(frozen=True)
class Violation:
    """A spec field whose URI may not be read or written."""

    loc: tuple[str | int, ...]
    value: str
    mode: str
    reason: str
    allowed: tuple[str, ...]

    @property
    def field(self) -> str:
        return ".".join(str(part) for part in self.loc)

    @property
    def message(self) -> str:
        where = ", ".join(self.allowed) or "none"
        return (
            f"{self.field}: {self.value!r} may not be {'written' if self.mode == WRITE else 'read'}"
            f" by this team: {self.reason}; the team's {self.mode} roots are: {where}"
        )


def normalise(uri: str) -> str:
    """The canonical form of a local path or ``s3://`` URI, or RootError saying why not."""
    if not isinstance(uri, str) or not uri:
        raise RootError("an empty URI")
    if any(unicodedata.category(c) == "Cc" for c in uri):
        raise RootError("control characters are not allowed in a URI")
    if bad := sorted({c for c in uri if c in LOOKALIKES}):
        names = ", ".join(f"U+{ord(c):04X} {unicodedata.name(c, '?')}" for c in bad)
        raise RootError(f"characters that look like '/', '.' or '\\' are not allowed ({names})")
    if unicodedata.normalize("NFKC", uri) != uri:
        raise RootError("the URI is not in Unicode NFKC form (it has compatibility characters)")
    if _PERCENT.search(uri):
        raise RootError("percent-encoded characters (%xx) are not allowed: write them plainly")
    if "\\" in uri:
        raise RootError("backslashes are not allowed in a URI")
    if uri.startswith("s3://"):
        return _normalise_s3(uri)
    if uri.startswith("file://"):
        rest = uri.removeprefix("file://")
        if not rest.startswith("/"):
            host = rest.split("/", 1)[0]
            if host != "localhost":
                raise RootError(f"file:// URIs name no host (got {host!r})")
            rest = rest.removeprefix("localhost")
        uri = rest
    elif "://" in uri or uri.startswith("s3:"):
        raise RootError("only plain paths, file:// and s3:// URIs are allowed")
    if not uri.startswith("/"):
        raise RootError("a relative path: give an absolute path under one of the roots")
    if ".." in uri.split("/"):
        raise RootError("'..' is not allowed in a path")
    return os.path.realpath(uri)


def _normalise_s3(uri: str) -> str:
    rest = uri.removeprefix("s3://")
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise RootError(f"{bucket!r} is not a valid bucket name")
    key = key.removesuffix("/")
    segments = key.split("/") if key else []
    if any(s in ("", ".", "..") for s in segments):
        raise RootError("an S3 key may not have empty, '.' or '..' segments")
    return "/".join([f"s3://{bucket}", *segments])


def is_under(uri: str, root: str) -> bool:
    """Whether normalised ``uri`` is ``root`` or inside it, by whole segments."""
    if uri == root:
        return True
    return uri.startswith(root if root.endswith("/") else root + "/")


@dataclass(frozen=True)
class Roots:
    """Where a job may read (``read``; a write root may be read too) and write."""

    read: tuple[str, ...]
    write: tuple[str, ...]

    @classmethod
    def of(cls, read: Iterable[str], write: Iterable[str]) -> Roots:
        """Normalised, deduplicated, in order; roots that cannot be normalised raise."""
        write_n = _unique(normalise(r) for r in write)
        read_n = _unique([*write_n, *(normalise(r) for r in read)])
        return cls(read=read_n, write=write_n)

    def allowed(self, mode: str) -> tuple[str, ...]:
        return self.write if mode == WRITE else self.read

    def check(self, uri: str, mode: str) -> None:
        """RootError unless ``uri`` normalises to a place under one of ``mode``'s roots."""
        path = normalise(uri)
        if not any(is_under(path, root) for root in self.allowed(mode)):
            resolved = f" (resolves to {path})" if path != uri else ""
            raise RootError(f"it is outside every {mode} root{resolved}")

    def to_env(self) -> dict[str, str]:
        return {
            ENV_READ_ROOTS: json.dumps(list(self.read)),
            ENV_WRITE_ROOTS: json.dumps(list(self.write)),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Roots | None:
        """The roots the scheduler gave a job, or None when it gave none (a job run by hand)."""
        if ENV_READ_ROOTS not in env and ENV_WRITE_ROOTS not in env:
            return None
        try:
            read = json.loads(env.get(ENV_READ_ROOTS, "[]"))
            write = json.loads(env.get(ENV_WRITE_ROOTS, "[]"))
        except ValueError as e:
            raise RootError(f"{ENV_READ_ROOTS}/{ENV_WRITE_ROOTS} are not JSON lists: {e}") from e
        return cls.of(read, write)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def violations(
    spec: Mapping[str, Any],
    paths: UriPaths,
    roots: Roots,
    indirect: Iterable[tuple[tuple[str | int, ...], str]] = (),
) -> list[Violation]:
    """Every URI in a dumped spec that its team may not read (read fields) or write (write
    fields), and every ``indirect`` read (``Spec.indirect_reads``: what files the spec names
    lead the job to read) outside the read roots. Unresolved ``${stage.field}`` placeholders
    are left for the scheduler."""
    found = []
    for loc, value in indirect:
        try:
            roots.check(value, READ)
        except RootError as e:
            found.append(Violation(loc, value, READ, str(e), roots.allowed(READ)))
    fields = [(READ, p, False) for p in paths.read] + [(WRITE, p, False) for p in paths.write]
    fields += [(READ, p, True) for p in paths.named]  # a name, or a file when it looks like one
    for mode, path, maybe_name in fields:
        for loc, value in values_at(spec, path):
            if value is None or (isinstance(value, str) and "${" in value):
                continue
            if maybe_name and isinstance(value, str) and not looks_like_path(value):
                continue
            try:
                if not isinstance(value, str):
                    raise RootError(f"expected a URI string, got {type(value).__name__}")
                roots.check(value, mode)
            except RootError as e:
                found.append(Violation(loc, str(value), mode, str(e), roots.allowed(mode)))
    return found


def contains(root: str, path: str) -> bool:
    """Whether ``root`` is ``path`` or one of its ancestors (both local, realpath'd), for
    keeping secrets out of every root."""
    if root.startswith("s3://"):
        return False
    return is_under(os.path.realpath(path), normalise(root))
