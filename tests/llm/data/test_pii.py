import pytest

from llm.data.pii import PII_COUNTS, PIIRedactor, luhn_valid, redact, sum_pii_counts
from tests.llm.data.batches import make_batch

PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\nabc==\n-----END RSA PRIVATE KEY-----"
)


@pytest.mark.parametrize(("text", "expected", "kind"), [
    ("Write to jane.doe+news@mail.example.co.uk today.", "Write to <EMAIL> today.", "EMAIL"),
    ("Call 555-123-4567 now.", "Call <PHONE> now.", "PHONE"),
    ("Call (212) 555-0199.", "Call <PHONE>.", "PHONE"),
    ("Call +1 415.555.2671 now", "Call <PHONE> now", "PHONE"),
    ("Ring +44 20 7946 0958 please", "Ring <PHONE> please", "PHONE"),
    ("Ruf +49 30 12345678 an", "Ruf <PHONE> an", "PHONE"),
    ("Server 192.168.0.1.", "Server <IP_ADDRESS>.", "IP_ADDRESS"),
    ("Host 2001:db8::8a2e:370:7334 is up", "Host <IP_ADDRESS> is up", "IP_ADDRESS"),
    ("Host fe80::1ff:fe23:4567:890a up", "Host <IP_ADDRESS> up", "IP_ADDRESS"),
    ("Mapped ::ffff:192.0.2.1 here", "Mapped <IP_ADDRESS> here", "IP_ADDRESS"),
    ("Card 4111 1111 1111 1111 ok", "Card <CREDIT_CARD> ok", "CREDIT_CARD"),
    ("Card 5500-0000-0000-0004 ok", "Card <CREDIT_CARD> ok", "CREDIT_CARD"),
    ("Amex 378282246310005 ok", "Amex <CREDIT_CARD> ok", "CREDIT_CARD"),
    ("SSN 123-45-6789.", "SSN <SSN>.", "SSN"),
    ("id AKIAIOSFODNN7EXAMPLE set", "id <AWS_ACCESS_KEY> set", "AWS_ACCESS_KEY"),
    ("id ASIAY34FZKBOKMUTVV7A set", "id <AWS_ACCESS_KEY> set", "AWS_ACCESS_KEY"),
    (
        'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
        'aws_secret_access_key = "<AWS_SECRET_KEY>"',
        "AWS_SECRET_KEY",
    ),
    (f"key:\n{PRIVATE_KEY}\nend", "key:\n<PRIVATE_KEY>\nend", "PRIVATE_KEY"),
])  # fmt: skip
def test_positives_are_redacted(text: str, expected: str, kind: str) -> None:
    assert redact(text) == (expected, {kind: 1})


@pytest.mark.parametrize("text", [
    "Released v1.2.3.4 and version 1.2.3.4, ver. 10.0.0.1, build 2.0.0.1 today.",
    "Files 1.2.3.4.5 and a.1.2.3.4 are not addresses.",
    "On 2024-01-15 and 01/15/2024 and 15.01.2024 at 10:30:45.",
    "ISBN 978-0-306-40615-7 and ISBN 0-306-40615-2.",
    "Order 4111 1111 1111 1112 failed Luhn; order 1234567890123 too.",
    "We sold 1,234,567 units for $12,345.67 (about 3.14159 each).",
    "SSN-like 000-12-3456, 666-12-3456, 912-34-5678, 123-00-4567.",
    "Call me at 5551234567 or ext 1234.",
    "In C++ use std::vector and a::b; time 12:30:45:00.",
    "AKIA is a prefix; AKIAshort is not a key.",
    "secret_key = short",
])  # fmt: skip
def test_look_alikes_are_left_alone(text: str) -> None:
    assert redact(text) == (text, {})


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")


def test_redactor_counts_per_type_and_skips_removed_rows() -> None:
    texts = ["a@b.com and c@d.org, call 555-123-4567", "nothing here", "x@y.com"]
    batch = PIIRedactor().apply(make_batch(texts, [None, None, "earlier"]))
    assert batch.column("text").to_pylist() == [
        "<EMAIL> and <EMAIL>, call <PHONE>",
        "nothing here",
        "x@y.com",
    ]
    counts = batch.column(PII_COUNTS).to_pylist()
    assert counts == ['{"EMAIL": 2, "PHONE": 1}', "{}", None]
    assert sum_pii_counts([*counts, '{"EMAIL": 1}']) == {"EMAIL": 3, "PHONE": 1}


def test_redactor_type_selection() -> None:
    assert redact("a@b.com 555-123-4567", ["EMAIL"]) == ("<EMAIL> 555-123-4567", {"EMAIL": 1})
    with pytest.raises(ValueError, match="unknown PII types"):
        PIIRedactor(types=["NAME"])
