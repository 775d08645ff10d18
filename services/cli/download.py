"""``llmforge download``: one file of a job's output (or of a dataset or model) through the API.

llmforge download JOB data/part-00000.parquet -o part.parquet [--resume]
llmforge datasets download ID stats.json          llmforge models download ID model.safetensors

``--resume`` continues a partly downloaded file with an HTTP range request.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from services.cli.api import Api, ApiError
from services.cli.client import api_client, console


def fetch(api: Api, path: str, target: Path, resume: bool) -> bool:
    """Stream the file at ``path`` (``Api.job_file``/``artifact_file``) into ``target``; with
    ``resume``, ask only for the bytes it lacks."""
    have = target.stat().st_size if resume and target.is_file() else 0
    try:
        with api.open_file(path, start=have) as r:
            if r.status_code == 206 and not r.headers.get("content-range", "").startswith(
                f"bytes {have}-"
            ):
                console.print("llmforge download: the server sent another range than asked for")
                return False
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "ab" if r.status_code == 206 else "wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
    except ApiError as e:
        if e.status == 416 and have:
            total = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("content-range", ""))
            if total and int(total.group(1)) == have:
                console.print(f"{target} is already complete ({have} bytes)")
                return True
            console.print(f"llmforge download: {target} is larger than the file: {e.error.detail}")
            return False
        console.print(f"llmforge download: {e.status}: {e.error.detail}")
        return False
    console.print(f"{target}: {target.stat().st_size} bytes")
    return True


def _download(args: argparse.Namespace, path: str) -> int:
    target = Path(args.output or args.path.rstrip("/").rsplit("/", 1)[-1])
    with api_client() as http:
        return 0 if fetch(Api(http), path, target, args.resume) else 1


def cmd_download(args: argparse.Namespace) -> int:
    return _download(args, Api.job_file(args.job, args.path))


def cmd_registry_download(args: argparse.Namespace) -> int:
    return _download(args, Api.artifact_file(args.category, args.id, args.path))


def _file_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the file's path relative to the output or artifact")
    p.add_argument("-o", "--output", help="where to write it (default: the file's name here)")
    p.add_argument(
        "--resume", action="store_true", help="continue a partly downloaded file (HTTP range)"
    )


def add_download_commands(sub: Any) -> None:
    p = sub.add_parser("download", help="download one file of a job's output")
    p.add_argument("job")
    _file_options(p)
    p.set_defaults(fn=cmd_download)


def add_registry_download(actions: Any, category: str) -> None:
    p = actions.add_parser("download", help=f"download one file of a {category[:-1]}")
    p.add_argument("id")
    _file_options(p)
    p.set_defaults(fn=cmd_registry_download, category=category)
