"""Model-based quality: train a fastText classifier on positive and negative examples (as DCLM
does), report how it does on held-out examples, and load it back for scoring.

Examples come from JSONL (plain, .gz, .zst) and Parquet files through the curate readers, so a
malformed record is counted with its reason and position, never fatal; plain-text files (.txt,
.txt.gz) hold one example a line. Each example is one fastText line: DCLM's preprocessing joins
the text's lines with spaces (fastText reads a newline as the end of an example) and nothing
else; ``fasttext_line`` is shared by training and scoring so both see the same input.

Training is reproducible: examples are held out by a hash of their text (so a duplicate never
sits on both sides), shuffled with a fixed seed, and fastText runs on one thread with that seed;
the same inputs and parameters give a byte-identical model file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from llm.data.read_parquet import read_parquet
from llm.data.readers import FieldMap, read_jsonl
from llm.data.schema import POSITION, REASON, TEXT
from llm.data.sources import format_of

POSITIVE = "hq"  # DCLM's label for the high-quality side
NEGATIVE = "lq"
LABEL_PREFIX = "__label__"
TEXT_SUFFIXES = (".txt", ".txt.gz")
_MALFORMED_SHOWN = 5  # positions of malformed records listed in the report, per example set


@dataclass(frozen=True)
class TrainParams:
    """fastText's supervised options that matter here: its defaults except bigrams (as DCLM),
    and a smaller vector size, vocabulary and hash table, so a model stays tens of MB."""

    epoch: int = 5
    lr: float = 0.1
    wordNgrams: int = 2  # fastText's own spelling: passed through as is
    # The model is (words + bucket) × dim floats: fastText's 2M buckets at dim 100 are 800 MB.
    dim: int = 64
    bucket: int = 100_000
    minCount: int = 2
    seed: int = 0

    def check(self) -> None:
        if self.epoch < 1 or self.lr <= 0 or self.dim < 1 or self.minCount < 1:
            raise ValueError("epoch, lr, dim and minCount must be positive")
        if self.wordNgrams < 1 or self.bucket < 0 or (self.wordNgrams > 1 and self.bucket == 0):
            raise ValueError("wordNgrams must be >= 1, and word n-grams need bucket > 0")


def fasttext_line(text: str) -> str:
    """One example as fastText reads it: the text's lines joined by spaces (DCLM)."""
    return " ".join(text.strip().splitlines())


@dataclass
class ExampleSet:
    """The usable texts of one side, and the records that could not be used."""

    texts: list[str] = field(default_factory=list)
    empty: int = 0  # records whose text is blank: nothing to learn from
    malformed: int = 0
    malformed_positions: list[str] = field(default_factory=list)


def _example_files(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
            if not found:
                raise ValueError(f"no JSONL, Parquet or .txt files under {path}")
            yield from found
        elif path.is_file():
            if _kind(path) is None:
                raise ValueError(f"{path}: not JSONL, Parquet or .txt (by its extension)")
            yield path
        else:
            raise FileNotFoundError(f"example file not found: {path}")


def _kind(path: Path) -> str | None:
    if path.name.endswith(TEXT_SUFFIXES):
        return "text"
    found = format_of(path.name)
    return found if found in ("jsonl", "parquet") else None


def _records(path: Path, text_field: str) -> Iterator[tuple[str, str, str | None]]:
    """(position, text, malformed reason) of every record in one file."""
    kind = _kind(path)
    if kind == "text":
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue  # a blank line separates examples, as in JSONL
                try:
                    yield f"{path.name}:{number}", raw.decode("utf-8"), None
                except UnicodeDecodeError as e:
                    yield f"{path.name}:{number}", "", f"malformed: not UTF-8 ({e.reason})"
        return
    fields = FieldMap(text=text_field, id=None)
    reader = read_jsonl if kind == "jsonl" else read_parquet
    for batch in reader(str(path), field_map=fields):
        columns = batch.select([POSITION, TEXT, REASON]).to_pydict()
        yield from zip(columns[POSITION], columns[TEXT], columns[REASON], strict=True)


def read_examples(paths: Sequence[str | os.PathLike[str]], text_field: str = "text") -> ExampleSet:
    """Every non-blank example in ``paths`` (files or folders); blank and malformed ones counted.

    In JSONL and Parquet a record is an example; in .txt files a non-blank line is.
    """
    examples = ExampleSet()
    for path in _example_files(paths):
        for position, text, reason in _records(path, text_field):
            if reason is not None:
                examples.malformed += 1
                if len(examples.malformed_positions) < _MALFORMED_SHOWN:
                    examples.malformed_positions.append(f"{position} ({reason})")
            elif fasttext_line(text):
                examples.texts.append(text)
            else:
                examples.empty += 1
    return examples


def is_held_out(text: str, fraction: float) -> bool:
    """Whether an example belongs to the held-out set: a stable hash of its text, not chance."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


@lru_cache(maxsize=4)
def _load(path: str, size: int, mtime_ns: int) -> Any:
    import fasttext  # imported here so modules that never score quality do not need it

    try:
        return fasttext.load_model(path)
    except ValueError as e:
        raise ValueError(f"not a fastText model: {path} ({e})") from e


def load_model(path: str | os.PathLike[str], label: str = POSITIVE) -> Any:
    """The fastText model at ``path``, checked to predict ``label``; cached per process.

    The cache key includes the file's size and modification time, so a retrained model at the
    same path is loaded afresh.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"quality classifier model not found: {file}")
    stat = file.stat()
    model = _load(str(file), stat.st_size, stat.st_mtime_ns)
    labels = [name.removeprefix(LABEL_PREFIX) for name in model.get_labels()]
    if label not in labels:
        raise ValueError(f"quality classifier {file} has no label {label!r} (labels: {labels})")
    return model


def positive_scores(model: Any, texts: list[str], label: str = POSITIVE) -> list[float]:
    """P(``label``) for each text, in one batched fastText call."""
    if not texts:
        return []
    target = LABEL_PREFIX + label
    labels, probs = model.predict([fasttext_line(text) for text in texts], k=-1)
    # fastText smooths probabilities by 1e-5 and can report 1.00001; a score is a probability.
    return [
        min(1.0, float(dict(zip(names, values, strict=True)).get(target, 0.0)))
        for names, values in zip(labels, probs, strict=True)
    ]


def _metrics(scores: list[float], truth: list[bool], threshold: float) -> dict[str, Any]:
    predicted = [score >= threshold for score in scores]
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    accuracy = correct / len(truth) if truth else None
    return {
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": accuracy,
        "true_positive": tp,
        "false_positive": fp,
        "false_negative": fn,
    }


def _write_training_file(path: Path, rows: list[tuple[str, str]], seed: int) -> None:
    # fastText learns in file order; one seeded shuffle mixes the two labels reproducibly.
    rows = sorted(rows)
    random.Random(seed).shuffle(rows)
    with path.open("w", encoding="utf-8") as out:
        for label, text in rows:
            out.write(f"{LABEL_PREFIX}{label} {fasttext_line(text)}\n")


# Run as ``python -c`` in a fresh process: fasttext 0.9.2 keeps state between trainings in one
# process (a second run with the same seed on one thread gives a different model, and sometimes
# "Encountered NaN"), while the first training in a new process is reproducible.
_FIT = """import json, sys, fasttext
options = json.loads(sys.argv[1])
output = options.pop("output")
fasttext.train_supervised(**options).save_model(output)
"""


def _fit(train_file: Path, params: TrainParams, output: Path) -> None:
    options = asdict(params) | {"input": str(train_file), "output": str(output)}
    options |= {"loss": "softmax", "thread": 1, "verbose": 0}
    done = subprocess.run(
        [sys.executable, "-c", _FIT, json.dumps(options)], capture_output=True, text=True
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeError(f"fastText training failed: {lines[-1]}")


def _load_fresh(path: Path) -> Any:
    import fasttext

    return fasttext.load_model(str(path))


def _side_report(examples: ExampleSet, train: int, held: int) -> dict[str, Any]:
    return {
        "examples": len(examples.texts),
        "train": train,
        "held_out": held,
        "empty": examples.empty,
        "malformed": examples.malformed,
        "malformed_positions": examples.malformed_positions,
    }


def train_classifier(
    positive: ExampleSet,
    negative: ExampleSet,
    output: str | os.PathLike[str],
    *,
    holdout: float = 0.1,
    params: TrainParams = TrainParams(),
) -> dict[str, Any]:
    """Train on both sides minus the held-out examples, save ``output`` (.bin), and return the
    report (also written next to the model as .json): counts, parameters, held-out metrics."""
    params.check()
    out = Path(output)
    if out.suffix != ".bin":
        raise ValueError(f"output must be a .bin file, got {out}")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    for name, side in (("positive", positive), ("negative", negative)):
        if not side.texts:
            raise ValueError(f"no usable {name} examples ({side.malformed} malformed)")
    started = time.perf_counter()
    train: list[tuple[str, str]] = []
    held: list[tuple[str, bool]] = []
    sides: dict[str, Any] = {}
    for name, label, side in (("positive", POSITIVE, positive), ("negative", NEGATIVE, negative)):
        flags = [is_held_out(text, holdout) for text in side.texts]
        train += [(label, t) for t, h in zip(side.texts, flags, strict=True) if not h]
        held += [(t, label == POSITIVE) for t, h in zip(side.texts, flags, strict=True) if h]
        sides[name] = _side_report(side, flags.count(False), flags.count(True))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        _write_training_file(train_file, train, params.seed)
        _fit(train_file, params, out)
    scores = positive_scores(_load_fresh(out), [text for text, _ in held])
    report = {
        "model": str(out),
        "model_bytes": out.stat().st_size,
        "labels": {"positive": POSITIVE, "negative": NEGATIVE},
        "holdout": holdout,
        "params": asdict(params),
        "sides": sides,
        "held_out": _metrics(scores, [truth for _, truth in held], threshold=0.5),
        "seconds": round(time.perf_counter() - started, 3),
    }
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report
