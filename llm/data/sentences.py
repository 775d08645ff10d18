"""Counting sentences in a line, standing in for NLTK's English Punkt tokenizer (C4's rule).

Punkt breaks after "!" and "?", and after "." unless the word before it is a known abbreviation
or a single-letter initial; an ellipsis ends a sentence only when a capitalised word follows. This
approximation keeps those rules with a fixed abbreviation list instead of Punkt's trained one.
"""

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


def count_sentences(line: str) -> int:
    """Number of sentences in ``line`` (0 for a blank line)."""
    tokens = line.split()
    if not tokens:
        return 0
    breaks = sum(_ends_sentence(tokens[i], tokens[i + 1]) for i in range(len(tokens) - 1))
    return breaks + 1
