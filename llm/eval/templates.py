"""Jinja2 prompt templates, rendered the way lm-evaluation-harness renders them.

A task field is either a column name (the record's value as it is), or a Jinja2 template
rendered with StrictUndefined (an unknown column is an error, never an empty string);
choices and integer targets rendered as text are read back as Python literals, as lm-eval does.
The filters reproduce lm-eval's per-task preprocessing (HellaSwag, WikiText).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta


def regex_replace(text: str, pattern: str, repl: str, count: int = 0) -> str:
    return re.sub(pattern, repl, text, count=count)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py preprocess: WikiHow bracket artifacts out, spaces fixed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


_WIKITEXT_RULES: list[tuple[str, str]] = [
    ("s '", "s'"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
]


def wikitext_detokenize(text: str) -> str:
    """lm-eval's wikitext/preprocess_wikitext.py wikitext_detokenizer, step for step."""
    text = text.replace("s '", "s'")
    text = re.sub(r"/' [0-9]/", r"/'[0-9]/", text)
    for old, new in _WIKITEXT_RULES[1:]:
        text = text.replace(old, new)
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', text)
    text = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)
    text = text.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    text = text.replace(" " + chr(176) + " ", chr(176))
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    text = text.replace(" N ", " 1 ")
    return text.replace(" 's", "'s")


_LAST_WORD = re.compile(r"([^\W_]+)\W*$")


def _passage(text: str) -> str:
    """The first paragraph of a text document, its lines joined with spaces, without Project
    Gutenberg's _italics_ marks."""
    return " ".join(text.strip().split("\n\n")[0].replace("_", "").split())


def lambada_context(text: str) -> str:
    """LAMBADA's context: the passage up to its last word (the word's trailing punctuation and
    closing quotes are dropped with it, as LAMBADA's targets are bare words)."""
    passage = _passage(text)
    found = _LAST_WORD.search(passage)
    return passage[: found.start()].rstrip() if found else passage


def lambada_target(text: str) -> str:
    """LAMBADA's target: the passage's last word, without punctuation, after a space."""
    found = _LAST_WORD.search(_passage(text))
    return " " + found.group(1) if found else ""


FILTERS = {
    "lambada_context": lambada_context,
    "lambada_target": lambada_target,
    "regex_replace": regex_replace,
    "hellaswag_preprocess": hellaswag_preprocess,
    "wikitext_detokenize": wikitext_detokenize,
}

ENV = jinja2.Environment(
    loader=jinja2.BaseLoader(), undefined=jinja2.StrictUndefined, keep_trailing_newline=True
)
ENV.filters.update(FILTERS)


@lru_cache(maxsize=512)
def _compiled(source: str) -> jinja2.Template:
    return ENV.from_string(source)


def referenced_columns(source: str) -> set[str]:
    """The variables a template reads, i.e. the record columns it needs."""
    return set(meta.find_undeclared_variables(ENV.parse(source)))


def render_text(spec: str, record: dict[str, Any]) -> str:
    if spec in record:
        return str(record[spec])
    return _compiled(spec).render(**record)


def render_value(spec: Any, record: dict[str, Any], *, digits_as_index: bool) -> Any:
    """A column's raw value, a literal from the task file, or a rendered template read back as
    a Python literal when it looks like one (lm-eval's doc_to_choice / doc_to_target: digits
    become an index into the choices only when the task has choices)."""
    if not isinstance(spec, str):
        return spec
    if spec in record:
        return record[spec]
    text = _compiled(spec).render(**record)
    if digits_as_index and text.isdigit():
        return int(text)
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        try:
            return ast.literal_eval(text)
        except (SyntaxError, ValueError):
            return text
    return text
