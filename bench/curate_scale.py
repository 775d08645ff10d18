"""How the curate job's memory and time grow with the corpus: 1× and 4× the same mix.

The 1× corpus is the dolma Common Crawl sample plus Gutenberg book chunks. The 4× corpus holds
four copies with new ids; copies 2-4 permute the words of every line but its last (reversed,
even-then-odd, and that reversed), so length, vocabulary, stop words and line ends (what the
filters look at) stay the same while few 5-word shingles are shared: dedup keeps nearly all of
them and every step does about 4× the work.

Each run is a fresh process with its own local Ray. Peak memory is sampled every 0.2 s as the
driver's RSS plus the RSS of every Ray worker (``ray::`` processes) it started; the largest single
worker is reported too. Last line: ``{"peak_mem_ratio_4x": …, "time_ratio_4x": …}``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BOOK_CHUNKS = 300
PARAGRAPHS_PER_CHUNK = 20
STEPS = [
    {"kind": "normalize"},
    {"kind": "length"},
    {"kind": "gopher_quality"},
    {"kind": "gopher_repetition"},
    {"kind": "fineweb_quality"},
    {"kind": "pii"},
    {"kind": "exact_dedup"},
    {"kind": "minhash_dedup"},
]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def base_corpus() -> list[tuple[str, str]]:
    docs = [(d["id"], d["text"]) for d in _jsonl(next((DATA / "web/cc_dolma_sample").iterdir()))]
    for book in _jsonl(DATA / "text/gutenberg_books/gutenberg_books.jsonl.gz"):
        paragraphs = re.split(r"\n[ \t]*\n", book["text"].replace("\r\n", "\n"))
        for start in range(0, len(paragraphs), PARAGRAPHS_PER_CHUNK)[:3]:
            chunk = "\n\n".join(paragraphs[start : start + PARAGRAPHS_PER_CHUNK])
            docs.append((f"{book['id']}-{start}", chunk))
    return docs[: 697 + BOOK_CHUNKS]


def _permute(line: str, copy: int) -> str:
    # The last word stays last, so line-end punctuation (FineWeb's and C4's line rules) holds.
    words, last = line.split(" ")[:-1], line.split(" ")[-1:]
    if copy == 1:
        return " ".join([*reversed(words), *last])
    interleaved = words[::2] + words[1::2]
    return " ".join([*(interleaved if copy == 2 else reversed(interleaved)), *last])


def write_corpus(folder: Path, copies: int, files: int = 4) -> int:
    docs = [
        (
            f"c{copy}-{doc_id}",
            text if copy == 0 else "\n".join(_permute(line, copy) for line in text.split("\n")),
        )
        for copy in range(copies)
        for doc_id, text in base_corpus()
    ]
    folder.mkdir(parents=True)
    for k in range(files):
        with (folder / f"part-{k}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs[k::files])
    return len(docs)


def _descendants_rss_kb(root: int) -> tuple[int, int]:
    """(sum of RSS of root's ray:: descendants, the largest one), in KiB, from one ps call."""
    rows = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,rss=,args="], capture_output=True, text=True
    ).stdout
    parent, rss, args = {}, {}, {}
    for row in rows.splitlines():
        pid, ppid, size, command = row.split(None, 3) + [""] * (4 - len(row.split(None, 3)))
        parent[int(pid)], rss[int(pid)], args[int(pid)] = int(ppid), int(size), command
    workers = []
    for pid in parent:
        node = pid
        while node in parent and node not in (root, 0, 1):
            node = parent[node]
        if node == root and args[pid].startswith("ray::"):
            workers.append(rss[pid])
    return sum(workers), max(workers, default=0)


def _own_rss_kb() -> int:
    pages = int(Path(f"/proc/{os.getpid()}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def run_once(spec_path: str) -> dict[str, Any]:
    """Run the job in this process (the child side), sampling memory while it runs."""
    import resource

    from contracts.curate import CurateSpec
    from ray_jobs.curate.job import run

    peak = {"total_kb": 0, "worker_kb": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            workers, largest = _descendants_rss_kb(os.getpid())
            own = _own_rss_kb()
            peak["total_kb"] = max(peak["total_kb"], own + workers)
            peak["worker_kb"] = max(peak["worker_kb"], largest)

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    stats = run(CurateSpec.model_validate_json(Path(spec_path).read_text()))["stats"]
    seconds = time.perf_counter() - started
    done.set()
    driver_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "driver_peak_mb": driver_kb / 1024,
        "max_worker_mb": peak["worker_kb"] / 1024,
        "peak_total_mb": peak["total_kb"] / 1024,
        "docs": stats["documents"],
        "kept": stats["kept"]["documents"],
    }


def measure(work: Path, copies: int) -> dict[str, Any]:
    docs = write_corpus(work / f"in-{copies}x", copies)
    spec = work / f"spec-{copies}x.json"
    spec.write_text(
        json.dumps(
            {
                "input": str(work / f"in-{copies}x"),
                "output": str(work / f"out-{copies}x"),
                "parts_per_file": 2,
                "steps": STEPS,
            }
        )
    )
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    command = [sys.executable, "-m", "bench.curate_scale", "--run", str(spec)]
    child = subprocess.run(command, capture_output=True, text=True, env=env)
    if child.returncode:
        raise RuntimeError(f"{copies}x run failed:\n{child.stderr[-4000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["docs"] == docs, (result, docs)
    return result


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--run":
        print(json.dumps(run_once(sys.argv[2])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        one, four = measure(Path(tmp), 1), measure(Path(tmp), 4)
    for name, result in (("1x", one), ("4x", four)):
        print(
            name,
            json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}),
        )
    print(
        json.dumps(
            {
                "peak_mem_ratio_4x": round(four["peak_total_mb"] / one["peak_total_mb"], 2),
                "time_ratio_4x": round(four["seconds"] / one["seconds"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
