import pytest

from llm.data.fineweb import FineWebQualityFilter
from tests.llm.data.batches import make_batch

FINEWEB = FineWebQualityFilter()


def long_line(i: int, end: str = "") -> str:
    return f"line number {i} carries several distinct words here{end}"


@pytest.mark.parametrize(("ended", "reason"), [(12, "line_punct_ratio"), (13, None)])
def test_line_punctuation_ratio(ended: int, reason: str | None) -> None:
    lines = [long_line(i, "." if i < ended else "") for i in range(100)]  # 12/100 = 0.12 fails
    assert FINEWEB.check("\n".join(lines)) == (reason and f"fineweb_quality:{reason}")


def test_line_punctuation_exclude_zero() -> None:
    text = "\n".join(long_line(i) for i in range(10))
    assert FINEWEB.check(text) == "fineweb_quality:line_punct_ratio"
    assert FineWebQualityFilter(line_punct_exclude_zero=True).check(text) is None


@pytest.mark.parametrize(("short", "reason"), [(66, None), (67, "short_line_ratio")])
def test_short_line_ratio(short: int, reason: str | None) -> None:
    lines = [f"Short {i}." if i < short else long_line(i, ".") for i in range(100)]
    text = "\n".join(lines)
    got = FineWebQualityFilter(new_line_ratio=None).check(text)
    assert got == (reason and f"fineweb_quality:{reason}")


def test_duplicate_line_characters() -> None:
    lines = [long_line(i, ".") for i in range(200)]
    assert FINEWEB.check("\n".join(lines)) is None
    assert FINEWEB.check("\n".join([*lines, *lines[:3]])) == "fineweb_quality:char_dup_ratio"


def test_list_ratio() -> None:
    # 3 tokens ("Item", "7", ".") per newline: above 0.3 newlines per word.
    text = "\n".join(f"Item {i}." for i in range(40))
    got = FineWebQualityFilter(short_line_thr=None).check(text)
    assert got == "fineweb_quality:list_ratio"


def test_apply_respects_earlier_rejections() -> None:
    batch = FINEWEB.apply(make_batch(["no punctuation", "no punctuation"], [None, "x"]))
    assert batch.column("reason").to_pylist() == ["fineweb_quality:line_punct_ratio", "x"]
