"""English word splitting as datatrove 0.10.1 does it: spaCy's blank English tokenizer, ported.

The Gopher, repetition and FineWeb rules count words, so their decisions depend on how text is
split; datatrove splits with ``spacy.blank("en")``. spaCy's tokenizer took 97 s on the 2,000
documents of bench/curate_vs_datatrove.py here, this port 7 s (about 2 s once its chunk
cache is warm), so spaCy's rules are reimplemented, in its order: split on whitespace; then, per
chunk, peel prefixes and suffixes one at a time (stopping at a special case,
``llm.data.words_special``), keep a URL whole, split the rest at infixes, and join adjacent tokens
that spell a special case. spaCy's English defaults only.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import chain

import regex

from llm.data.words_special import special_cases

_PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"
_CURRENCY_CHARS = "$£€¥฿₽﷼₴₠₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₵₶₷₸₹₺₻₼₾₿"
_ICON = r"\p{So}"
# spaCy's "lower" and "upper" letters include the uncased scripts (CJK, Arabic, Tamil, …), whose
# vowel signs are marks.
_LOWER = r"\p{Ll}\p{Lo}\p{M}"
_UPPER = r"\p{Lu}\p{Lo}\p{M}"
_CURRENCY = rf"(?:US\$|C\$|A\$|[{regex.escape(_CURRENCY_CHARS)}])"
_UNITS = (
    "km|km²|km³|m|m²|m³|dm|dm²|dm³|cm|cm²|cm³|mm|mm²|mm³|ha|µm|nm|yd|in|ft|kg|g|mg|µg|t|lb|oz|"
    "m/s|km/h|kmh|mph|hPa|Pa|mbar|mb|MB|kb|KB|gb|GB|tb|TB|T|G|M|K|%"
)
_SINGLE = regex.escape(_PUNCT + _QUOTES)

_PREFIX = regex.compile(
    rf"^(?:§|%|=|—|–|\+(?![0-9])|[{_SINGLE}]|\.\.+|{_CURRENCY}|{_ICON})", regex.V1
)
_SUFFIX = regex.compile(
    "|".join(
        f"(?:{piece})$"
        for piece in (
            rf"[{_SINGLE}]|{_ICON}|……|\.\.+",
            "'s|'S|’s|’S|—|–",
            r"(?<=[0-9])\+",
            r"(?<=°[FfCcKk])\.",
            rf"(?<=[0-9]){_CURRENCY}",
            rf"(?<=[0-9])(?:{_UNITS})",
            rf"(?<=[0-9{_LOWER}%²\-\+{_SINGLE}])\.",
            rf"(?<=[{_UPPER}][{_UPPER}])\.",
        )
    ),
    regex.V1,
)
_INFIX = regex.compile(
    "|".join(
        (
            r"\.\.+|…",
            _ICON,
            r"(?<=[0-9])[+\-\*^](?=[0-9-])",
            rf"(?<=[{_LOWER}{regex.escape(_QUOTES)}])\.(?=[{_UPPER}{regex.escape(_QUOTES)}])",
            r"(?<=\p{L}),(?=\p{L})",
            r"(?<=[\p{L}0-9])(?:-|–|—|--|---|——|~)(?=\p{L})",
            r"(?<=[\p{L}0-9])[:<>=/](?=\p{L})",
        )
    ),
    regex.V1,
)
# spaCy's URL_PATTERN, its private-IP exclusions left out: host names of any case, a lowercase TLD.
_URL = regex.compile(
    r"^(?:[\w+\-.]{2,}://)?(?:\S+(?::\S*)?@)?"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|(?:(?:[A-Za-z0-9\u00a1-\uffff][A-Za-z0-9\u00a1-\uffff_-]{0,62})?"
    rf"[A-Za-z0-9\u00a1-\uffff]\.)+[{_LOWER}]{{2,63}})(?::\d{{2,5}})?(?:[/?#]\S*)?$",
    regex.V1,
)
_SPECIAL = special_cases()
# Joined back after splitting when adjacent tokens of one chunk spell one (spaCy's special-case
# matcher): "x" "." → "x.", ")" ":" → "):".
_MERGEABLE = {chunk for chunk, tokens in _SPECIAL.items() if tokens == [chunk]}


def _split_affixes(chunk: str) -> tuple[list[str], str, list[str]]:
    """Prefixes, the core, and suffixes (outermost last) of one chunk, as spaCy peels them."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    last = -1
    while chunk and len(chunk) != last and chunk not in _SPECIAL:
        last = len(chunk)
        pre = _PREFIX.match(chunk)
        pre_len = pre.end() if pre else 0
        if pre_len and chunk[pre_len:] in _SPECIAL:
            prefixes.append(chunk[:pre_len])
            return prefixes, chunk[pre_len:], suffixes
        suf = _SUFFIX.search(chunk[pre_len:])  # on the rest, so lookbehinds cannot see the prefix
        suf_len = suf.end() - suf.start() if suf else 0
        if suf_len and chunk[:-suf_len] in _SPECIAL:
            suffixes.append(chunk[-suf_len:])
            return prefixes, chunk[:-suf_len], suffixes
        if pre_len and suf_len and pre_len + suf_len <= len(chunk):
            prefixes.append(chunk[:pre_len])
            suffixes.append(chunk[-suf_len:])
            chunk = chunk[pre_len:-suf_len]
        elif pre_len:
            prefixes.append(chunk[:pre_len])
            chunk = chunk[pre_len:]
        elif suf_len:
            suffixes.append(chunk[-suf_len:])
            chunk = chunk[:-suf_len]
    return prefixes, chunk, suffixes


def _split_core(core: str) -> list[str]:
    if core in _SPECIAL:
        return _SPECIAL[core]
    if _URL.match(core):
        return [core]
    parts: list[str] = []
    start = 0
    for infix in _INFIX.finditer(core):
        if infix.start() == 0:  # spaCy never splits an infix off the start of the core
            continue
        parts.append(core[start : infix.start()])
        parts.append(infix.group())
        start = infix.end()
    parts.append(core[start:])
    return [part for part in parts if part]


def _merge_specials(tokens: list[str]) -> list[str]:
    """Adjacent tokens that together spell a one-token special case, joined (longest first)."""
    merged: list[str] = []
    i = 0
    while i < len(tokens):
        for width in (3, 2, 1):
            if width == 1 or "".join(tokens[i : i + width]) in _MERGEABLE:
                merged.append("".join(tokens[i : i + width]))
                i += width
                break
    return merged


@lru_cache(maxsize=1 << 16)
def _split_chunk(chunk: str) -> tuple[str, ...]:
    # Cached, as spaCy caches chunks: "the," or "said:" recur thousands of times in a corpus.
    prefixes, core, suffixes = _split_affixes(chunk)
    tokens = [*prefixes, *(_split_core(core) if core else []), *reversed(suffixes)]
    return tuple(_merge_specials(tokens) if len(tokens) > 1 else tokens)


# Every whitespace-separated chunk seen -> its tokens. A document's chunks are looked up in C
# (map + chain below) rather than by a Python loop per chunk, which was half of split_words'
# time; only chunks new to this table take a Python step. Emptied when it outgrows the bound.
_CHUNK_TOKENS: dict[str, tuple[str, ...]] = {}
_CHUNK_TABLE_LIMIT = 1 << 20


# Shortcuts for the commonest chunks, each giving what the full path below gives: a letters-only
# word; ASCII digits; letters-only words joined by "-" or "--", maybe with a possessive "'s",
# wrapped in opening and closing marks ("(word", 'word."', "sash-window,", "Melinda's)"). None
# of these marks is a letter, so no prefix, suffix or infix rule can see more than one mark at a
# time, and each mark is peeled off as a token of its own; "." splits off only after a lowercase
# letter (an uppercase one may be an initial), so only ASCII lowercase takes the shortcut. spaCy
# stops peeling at a special case and joins adjacent tokens that spell one, so a chunk where any
# span of words and marks is a special case, or adjacent tokens spell one (":)"), takes the full
# path. tests/llm/data/test_filters.py checks the shortcuts against the full path on every chunk
# of real text and on random chunks.
_CLOSING = frozenset(",;:!?)]\"”’'")
_OPENING = frozenset("(\"“‘'[")
_ASCII_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_POSSESSIVE = frozenset(("'s", "'S", "’s", "’S"))


def _words_of_core(core: str) -> list[str] | None:
    """A letters-only core, or letters-only words joined by "-" or "--" (the infix rule splits
    those off), as tokens; None for any other core."""
    if core.isalpha():
        return [core]
    pieces = core.split("-")
    if len(pieces) == 1 or not pieces[0].isalpha():
        return None
    tokens = [pieces[0]]
    i = 1
    while i < len(pieces):
        separator = "-"
        if not pieces[i]:  # "--": an empty piece between two hyphens; three or more: full path
            separator, i = "--", i + 1
            if i == len(pieces) or not pieces[i]:
                return None
        if not pieces[i].isalpha():
            return None
        tokens += (separator, pieces[i])
        i += 1
    return tokens


def _marked_word(chunk: str) -> tuple[str, ...] | None:
    """The tokens of a letters-only word (or hyphenated words), maybe with a possessive "'s",
    wrapped in opening and closing marks; None where the full path is needed."""
    start, end = 0, len(chunk)
    while start < end and chunk[start] in _OPENING:
        start += 1
    while end > start:
        last = chunk[end - 1]
        if last in _CLOSING or (last == "." and chunk[end - 2] in _ASCII_LOWER):
            end -= 1
        else:
            break
    tail = list(chunk[end:])
    if end - start > 2 and chunk[end - 2 : end] in _POSSESSIVE:
        end -= 2
        tail.insert(0, chunk[end : end + 2])
    words = _words_of_core(chunk[start:end])
    if words is None:
        return None
    for i in range(start + 1):  # spaCy stops peeling at a special case: a span of word and marks
        for j in range(end, len(chunk) + 1):
            if chunk[i:j] in _SPECIAL:
                return None
    tokens = [*chunk[:start], *words, *tail]
    for width in (2, 3):  # spaCy joins adjacent tokens that spell a special case
        for i in range(len(tokens) - width + 1):
            if "".join(tokens[i : i + width]) in _MERGEABLE:
                return None
    return tuple(tokens)


def _chunk_tokens(chunk: str) -> tuple[str, ...]:
    if chunk in _SPECIAL:
        return _split_chunk(chunk)
    if chunk.isalpha():  # most words: nothing to split
        return (chunk,)
    if chunk.isascii() and chunk.isdigit():
        return (chunk,)
    return _marked_word(chunk) or _split_chunk(chunk)


def split_words(text: str) -> list[str]:
    """English word tokens, punctuation split off as tokens of their own (spaCy's rules)."""
    chunks = text.split()
    table = _CHUNK_TOKENS
    new = set(chunks).difference(table)
    if new:
        if len(table) + len(new) > _CHUNK_TABLE_LIMIT:
            table.clear()
            new = set(chunks)
        # Plain words (most new chunks) are entered in C: each is its own one token.
        plain = set(filter(str.isalpha, new)).difference(_SPECIAL)
        table.update(zip(plain, zip(plain, strict=True), strict=True))
        for chunk in new.difference(plain):
            table[chunk] = _chunk_tokens(chunk)
    return list(chain.from_iterable(map(table.__getitem__, chunks)))


# The last batch's documents' words: a chain of filters (Gopher quality, Gopher repetition,
# FineWeb) looks at the same texts in turn, a batch at a time, and splits each text once. Keyed
# by the text itself (equal texts from different Arrow conversions hit); tuples, so no caller
# can change what the next one reads. The words are the chunk table's own strings, so an entry
# costs a pointer per word; bounded by entries and by words held.
_RECENT: dict[str, tuple[str, ...]] = {}
_RECENT_DOCS = 2048
_RECENT_WORDS = 1 << 23
_recent_words = 0


def document_words(text: str) -> tuple[str, ...]:
    """``split_words(text)`` as a tuple, remembered for the last batch or so of texts."""
    global _recent_words
    words = _RECENT.get(text)
    if words is None:
        words = tuple(split_words(text))
        while _RECENT and (
            len(_RECENT) >= _RECENT_DOCS or _recent_words + len(words) > _RECENT_WORDS
        ):
            _recent_words -= len(_RECENT.pop(next(iter(_RECENT))))
        _RECENT[text] = words
        _recent_words += len(words)
    return words
