"""Counting sentences in a line, standing in for NLTK's English Punkt tokenizer (C4's rule).

Punkt breaks after "!" and "?", and after "." unless the word before it is a known abbreviation
or a single-letter initial; an ellipsis ends a sentence only when a capitalised word follows. This
approximation keeps those rules with a fixed abbreviation list instead of Punkt's trained one.
"""

import re

_ABBREVIATIONS: frozenset[str] = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf",
        "inc", "ltd", "co", "corp", "no", "fig", "vol", "pp", "ed", "approx", "dept", "est",
        "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
        "u.s", "u.k", "a.m", "p.m", "gen", "gov", "sen", "rep", "rev", "capt", "col", "lt",
    }
)  # fmt: skip
_CLOSERS = "\"'”’)]"


def _ends_sentence(token: str, next_token: str) -> bool:
    core = token.rstrip(_CLOSERS)
    if core.endswith(("!", "?")):
        return True
    if core.endswith(("...", "…")):
        return next_token.lstrip(_CLOSERS + "(“‘")[:1].isupper()
    if not core.endswith("."):
        return False
    word = core.rstrip(".").lstrip("(\"'“‘").lower()
    if len(word) == 1 and word.isalpha():
        return False  # an initial, as in "J. Smith"
    return word not in _ABBREVIATIONS


# A whitespace-separated token that can end a sentence (its last character ends one or closes a
# quote or bracket) and the token after it: found in one regex pass, so the Python step runs
# for these few pairs rather than for every token of the line. ``\s`` and ``str.split`` agree on
# what whitespace is (both use Py_UNICODE_ISSPACE).
_CANDIDATE = re.compile(r"(?<!\S)(\S*[.!?…\"'”’)\]])(?=\s+(\S+))")


def count_sentences(line: str) -> int:
    """Number of sentences in ``line`` (0 for a blank line)."""
    if not line or line.isspace():
        return 0
    return 1 + sum(_ends_sentence(*match.groups()) for match in _CANDIDATE.finditer(line))
