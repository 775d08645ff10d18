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
from urllib.parse import quote

import httpx

from services.cli.client import api_client, console


def _error(r: httpx.Response) -> str:
    r.read()
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text


def fetch(api: httpx.Client, url: str, target: Path, resume: bool) -> bool:
    """Stream ``url`` into ``target``; with ``resume``, ask only for the bytes it lacks."""
    have = target.stat().st_size if resume and target.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with api.stream("GET", url, headers=headers) as r:
        if r.status_code == 416 and have:
            total = re.fullmatch(r"bytes \*/(\d+)", r.headers.get("content-range", ""))
            if total and int(total.group(1)) == have:
                console.print(f"{target} is already complete ({have} bytes)")
                return True
            console.print(f"llmforge download: {target} is larger than the file: {_error(r)}")
            return False
        if r.status_code not in (200, 206):
            console.print(f"llmforge download: {r.status_code}: {_error(r)}")
            return False
        if r.status_code == 206 and not r.headers.get("content-range", "").startswith(
            f"bytes {have}-"
        ):
            console.print("llmforge download: the server sent another range than asked for")
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "ab" if r.status_code == 206 else "wb") as f:
            for chunk in r.iter_bytes():
                f.write(chunk)
    console.print(f"{target}: {target.stat().st_size} bytes")
    return True


def _download(args: argparse.Namespace, base: str) -> int:
    target = Path(args.output or args.path.rstrip("/").rsplit("/", 1)[-1])
    url = f"{base}/{quote(args.path)}"
    with api_client(timeout=None) as api:
        return 0 if fetch(api, url, target, args.resume) else 1


def cmd_download(args: argparse.Namespace) -> int:
    return _download(args, f"/api/v1/jobs/{args.job}/artifacts")


def cmd_registry_download(args: argparse.Namespace) -> int:
    return _download(args, f"/api/v1/{args.category}/{args.id}/files")


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
