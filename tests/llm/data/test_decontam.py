import gzip
import json

import pytest

from llm.data.decontam import CONTAMINATED_WITH, DecontaminationFilter, NgramIndex
from tests.llm.data.batches import make_batch
from tests.shared import DATA

QUESTION = (
    "Which of the following best explains why the moon appears to change shape over the course "
    "of a month?"
)
HELLASWAG = DATA / "eval" / "hellaswag" / "hellaswag_val.jsonl.gz"


def filter_for(*texts: str, reject: bool = True) -> DecontaminationFilter:
    return DecontaminationFilter.from_texts({"arc": list(texts)}, reject=reject)


def test_shared_13_gram_rejects_despite_case_and_punctuation() -> None:
    doc = "Quiz time! WHICH of the following, best explains why the Moon appears to change shape."
    assert filter_for(QUESTION).check(doc) == "decontaminated:arc"


def test_12_shared_words_are_not_enough() -> None:
    words = QUESTION.split()
    assert filter_for(QUESTION).check("Intro: " + " ".join(words[:12]) + " zebra") is None
    assert filter_for(QUESTION).check("Intro: " + " ".join(words[:13]) + " zebra") is not None


def test_short_eval_texts_contribute_nothing() -> None:
    index = NgramIndex("tiny", ["only a few words here"])
    assert len(index) == 0
    assert filter_for("only a few words here").check("only a few words here") is None


def test_flag_mode_annotates_without_rejecting() -> None:
    batch = make_batch([QUESTION, "unrelated text", QUESTION], [None, None, "earlier"])
    flagged = filter_for(QUESTION, reject=False).apply(batch)
    assert flagged.column(CONTAMINATED_WITH).to_pylist() == ["arc", None, None]
    assert flagged.column("reason").to_pylist() == [None, None, "earlier"]
    rejected = filter_for(QUESTION).apply(batch)
    assert rejected.column("reason").to_pylist() == ["decontaminated:arc", None, "earlier"]


def test_first_matching_set_is_named_and_sizes_must_agree() -> None:
    both = DecontaminationFilter([NgramIndex("a", [QUESTION]), NgramIndex("b", [QUESTION])])
    assert both.match(QUESTION) == "a"
    with pytest.raises(ValueError, match="same n-gram size"):
        DecontaminationFilter([NgramIndex("a", [QUESTION]), NgramIndex("b", [QUESTION], n=8)])


def test_real_hellaswag_context_is_found_in_a_web_page() -> None:
    if not HELLASWAG.is_file():
        pytest.skip(f"{HELLASWAG} is absent")
    with gzip.open(HELLASWAG, "rt", encoding="utf-8") as lines:
        records = [json.loads(line) for _, line in zip(range(300), lines, strict=False)]
    contexts = [f"{r['query']} {r['endings'][r['label']]}" for r in records]
    decontam = DecontaminationFilter.from_texts({"hellaswag": contexts})
    long_context = next(c for c in contexts if len(c.split()) >= 20)
    page = "Home | About\nToday we look at this: " + long_context.upper() + "\nComments (0)"
    assert decontam.check(page) == "decontaminated:hellaswag"
    assert decontam.check("A recipe for bread with flour, water, salt and yeast.") is None
