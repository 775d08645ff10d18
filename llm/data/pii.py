"""Redaction of personal data and secrets with typed placeholders.

Each detector is a regex for candidates plus, where a pattern alone over-matches, a validator:
card numbers must pass the Luhn check and start like a card (2-6); SSNs exclude areas 000, 666 and
9xx; IPv6 candidates must parse. Detectors run in a fixed order (private keys first, phone numbers
last) and placeholders contain no digits, so a later detector never re-matches redacted text.

Trade-offs, chosen to keep look-alikes intact at the cost of some misses:
- IPv4: "1.2.3.4" is also how versions are written. Addresses glued to a letter or dot
  ("v1.2.3.4", "1.2.3.4.5") or preceded by "version"/"ver"/"release"/"build"/"v" are kept, so a
  real address written right after those words is missed.
- Phones: US numbers need separators or parentheses ("555-123-4567", "(555) 123 4567") and an area
  code starting 2-9; international numbers need a leading "+". Bare digit runs are left alone, so
  "5551234567" is missed, but dates, order numbers and ISBNs are not touched.
- SSNs are only recognised in the dashed form "123-45-6789".
- AWS secret keys are only recognised as the value of an assignment to a secret-key name.
"""

import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import pyarrow as pa
from annotated_types import MinLen

from llm.data.block import DocumentBlock
from llm.data.schema import TEXT, kept_mask, set_column

PII_COUNTS = "pii_counts"

_PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
    r".*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    re.DOTALL,
)
# The access-key-ID prefixes secret scanners (gitleaks) treat as credentials.
_AWS_ACCESS_KEY_RE = re.compile(r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
_AWS_SECRET_KEY_RE = re.compile(
    r"(?i)(\b(?:aws_?)?secret_?(?:access_?)?key\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?-i:[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b"
)
# 13-19 digits, optionally in groups split by single spaces or dashes.
_CARD_RE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
_SSN_RE = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_IPV6_RE = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?::\d{1,3}(?:\.\d{1,3}){3})?"
    r"(?![\w:]|\.\w)"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\w)")
_VERSION_CONTEXT_RE = re.compile(r"(?i)\b(?:version|ver\.?|release|build|v)\s*$")
_PHONE_RE = re.compile(
    r"(?<![\w+()-])"
    r"(?:"
    r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])\d{3}[ .-]\d{4}"  # US / NANP
    r"|\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international, E.164 with a "+"
    r")(?![\w-]|[.,]\d)"
)


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (digits only) passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _is_card(match: re.Match[str]) -> bool:
    text = match.group()
    digits = re.sub(r"\D", "", text)
    separators = set(re.sub(r"\d", "", text))
    # One kind of separator at most ("1234-5678 9012" is not how a card is written).
    return len(separators) <= 1 and digits[0] in "23456" and luhn_valid(digits)


def _is_ipv6(match: re.Match[str]) -> bool:
    text = match.group()
    if sum(char in "0123456789abcdefABCDEF" for char in text) < 4:
        return False  # "a::b", "::" are more likely code than addresses
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _is_ipv4(match: re.Match[str]) -> bool:
    before = match.string[max(0, match.start() - 12) : match.start()]
    return _VERSION_CONTEXT_RE.search(before) is None


def _is_phone(match: re.Match[str]) -> bool:
    digits = sum(char.isdigit() for char in match.group())
    return 10 <= digits <= 15 if match.group().startswith("+") else digits in (10, 11)


Detector = tuple[str, re.Pattern[str], Callable[[re.Match[str]], bool] | None]

DETECTORS: tuple[Detector, ...] = (
    ("PRIVATE_KEY", _PRIVATE_KEY_RE, None),
    ("AWS_ACCESS_KEY", _AWS_ACCESS_KEY_RE, None),
    ("AWS_SECRET_KEY", _AWS_SECRET_KEY_RE, None),
    ("EMAIL", _EMAIL_RE, None),
    ("CREDIT_CARD", _CARD_RE, _is_card),
    ("SSN", _SSN_RE, None),
    ("IP_ADDRESS", _IPV6_RE, _is_ipv6),
    ("IP_ADDRESS", _IPV4_RE, _is_ipv4),
    ("PHONE", _PHONE_RE, _is_phone),
)
PII_TYPES: tuple[str, ...] = tuple(dict.fromkeys(kind for kind, _, _ in DETECTORS))
# PII_TYPES spelled out, so the job spec's schema lists the choices.
PIIType = Literal[
    "PRIVATE_KEY", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "EMAIL", "CREDIT_CARD", "SSN", "IP_ADDRESS",
    "PHONE",
]  # fmt: skip


def _substitute(
    text: str, kind: str, pattern: re.Pattern[str], valid: Callable[[re.Match[str]], bool] | None
) -> tuple[str, int]:
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        if valid is not None and not valid(match):
            return match.group()
        count += 1
        # Only the secret-key pattern has a group: the assignment ("aws_secret_access_key = "),
        # which stays so the redacted text still reads as code; only the value goes.
        prefix = match.group(1) if pattern.groups else ""
        return f"{prefix}<{kind}>"

    return pattern.sub(replace, text), count


def redact(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, dict[str, int]]:
    """(``text`` with each PII span replaced by ``<TYPE>``, how many of each type were replaced)."""
    wanted = set(types)
    counts: dict[str, int] = {}
    for kind, pattern, valid in DETECTORS:
        if kind not in wanted:
            continue
        text, found = _substitute(text, kind, pattern, valid)
        if found:
            counts[kind] = counts.get(kind, 0) + found
    return text, counts


@dataclass(frozen=True)
class PIIParams:
    """Redacts personal data and secrets with typed placeholders (nothing is removed)."""

    types: Annotated[list[PIIType], MinLen(1)] = field(
        default_factory=lambda: list(get_args(PIIType))
    )


class PIIRedactor(DocumentBlock):
    """Replaces PII in kept rows and records per-type counts as a JSON object in ``pii_counts``.

    ``types`` limits which detectors run (default: all of ``PII_TYPES``). Nothing is rejected:
    redaction edits text. Rows removed earlier keep their text and get a null count.
    """

    name = "pii"
    kind = "pii"
    Params = PIIParams

    def __init__(self, types: Iterable[str] = PII_TYPES) -> None:
        unknown = set(types) - set(PII_TYPES)
        if unknown:
            raise ValueError(f"unknown PII types {sorted(unknown)}; known: {PII_TYPES}")
        self.types = tuple(types)

    def apply(self, batch: pa.Table) -> pa.Table:
        """Redact kept rows' text and add the ``pii_counts`` column."""
        texts = batch.column(TEXT).to_pylist()
        counts: list[str | None] = [None] * batch.num_rows
        for row, keep in enumerate(kept_mask(batch)):
            if keep:
                texts[row], found = redact(texts[row], self.types)
                counts[row] = json.dumps(found, sort_keys=True)
        batch = set_column(batch, TEXT, pa.array(texts, type=pa.string()))
        return set_column(batch, PII_COUNTS, pa.array(counts, type=pa.string()))

    def funnel(self, batch: pa.Table) -> dict[str, Any]:
        """What the step changed without removing anything (``batch`` is its output): the
        documents it redacted and the matches per type, for the curation funnel."""
        values = batch.column(PII_COUNTS).to_pylist()
        touched = sum(1 for value in values if value is not None and value != "{}")
        return {"redacted": {"documents": touched, "by_type": sum_pii_counts(values)}}


def sum_pii_counts(counts: Iterable[Any]) -> dict[str, int]:
    """Total per type over ``pii_counts`` values (JSON strings; nulls are skipped)."""
    totals: dict[str, int] = {}
    for value in counts:
        if value is None:
            continue
        for kind, found in json.loads(value).items():
            totals[kind] = totals.get(kind, 0) + int(found)
    return dict(sorted(totals.items()))
