"""Prompt templates: how an instruction record or a chat message becomes the model's prompt.

A template is a built-in name, a Jinja2 template (if it contains ``{{`` or ``{%``) or else a
``str.format`` string with named fields. Templates arrive in job specs over REST, so Jinja2 runs
sandboxed and a format string may only name the known fields (no ``{x.__class__}`` attribute
walks); an unknown field is an error at compile time, never an empty string at render time.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

INSTRUCTION_FIELDS = ("instruction", "input")
MESSAGE_FIELDS = ("role", "content")

# Stanford Alpaca's two prompts (train.py's PROMPT_DICT), with and without an input. "### Response:"
# ends with a newline, as in llm/eval/tasks/alpaca.yaml, so a tuned model is scored in the very
# format it learned (the original leaves it out and glues the answer to the colon).
_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{{ instruction }}\n\n### Input:\n{{ input }}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{{ instruction }}\n\n### Response:\n"
)
ALPACA = f"{{% if input %}}{_ALPACA_INPUT}{{% else %}}{_ALPACA_NO_INPUT}{{% endif %}}"

# Chat: a system message becomes a preamble, a user message an Alpaca-style instruction whose
# "### Response:" header opens the assistant turn that follows (assistant text is not templated:
# it is the trained response).
ALPACA_CHAT = (
    "{% if role == 'system' %}{{ content }}\n\n"
    "{% else %}### Instruction:\n{{ content }}\n\n### Response:\n{% endif %}"
)

BUILTIN_TEMPLATES = {"alpaca": ALPACA}
BUILTIN_CHAT_TEMPLATES = {"alpaca": ALPACA_CHAT}

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
)


@dataclass(frozen=True)
class Template:
    """A compiled template: call render(**values) with exactly the allowed fields."""

    source: str
    render_fn: Callable[[Mapping[str, str]], str]

    def render(self, values: Mapping[str, str]) -> str:
        return self.render_fn(values)


def _is_jinja(source: str) -> bool:
    return "{{" in source or "{%" in source


def _jinja(source: str, allowed: tuple[str, ...]) -> Template:
    try:
        parsed = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"template is not valid Jinja2 (line {e.lineno}): {e.message}") from e
    unknown = sorted(meta.find_undeclared_variables(parsed) - set(allowed))
    if unknown:
        raise ValueError(f"template uses unknown fields {unknown}; it may use {list(allowed)}")
    compiled = _ENV.from_string(source)
    return Template(source, lambda values: compiled.render(**values))


def _format(source: str, allowed: tuple[str, ...]) -> Template:
    try:
        parts = list(string.Formatter().parse(source))
    except ValueError as e:
        raise ValueError(f"template is not a valid format string: {e}") from e
    for _, field, spec, _ in parts:
        if field is None:
            continue
        if field not in allowed:
            raise ValueError(
                f"template field {{{field}}} is not allowed; use one of {list(allowed)} "
                "(plain names only)"
            )
        if spec and "{" in spec:
            raise ValueError(f"template field {{{field}}} has a nested field in its format spec")
    return Template(source, lambda values: source.format_map(dict(values)))


def compile_template(
    source: str,
    allowed: tuple[str, ...],
    *,
    builtins: Mapping[str, str],
    required: str | None = None,
    trial_render: bool = True,
) -> Template:
    """A built-in name, a Jinja2 template or a format string, checked against ``allowed``.

    ``required`` names a field the template must use (an instruction prompt that ignores the
    instruction is a mistake, not a choice). The trial render catches what only rendering
    shows ({input!z}, a failing expression); a process that must stay responsive (the API
    validating a spec) skips it, since a template such as {input:>1000000000} or a chain of
    Jinja2 replace filters can take any amount of memory and time, and leaves it to the job.
    """
    text = builtins.get(source, source)
    template = _jinja(text, allowed) if _is_jinja(text) else _format(text, allowed)
    if trial_render:
        try:
            template.render({name: "x" for name in allowed})
        except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as e:
            raise ValueError(f"template fails to render: {e}") from e
    if required is not None:
        used = (
            meta.find_undeclared_variables(_ENV.parse(text))
            if _is_jinja(text)
            else {f for _, f, _, _ in string.Formatter().parse(text) if f}
        )
        if required not in used:
            raise ValueError(f"template never uses {{{required}}}; it must place the {required}")
    return template


def instruction_template(source: str, *, trial_render: bool = True) -> Template:
    """The prompt of an {instruction, input} record."""
    return compile_template(
        source,
        INSTRUCTION_FIELDS,
        builtins=BUILTIN_TEMPLATES,
        required="instruction",
        trial_render=trial_render,
    )


def chat_template(source: str, *, trial_render: bool = True) -> Template:
    """The text of one system or user message, including the header of the reply it asks for."""
    return compile_template(
        source,
        MESSAGE_FIELDS,
        builtins=BUILTIN_CHAT_TEMPLATES,
        required="content",
        trial_render=trial_render,
    )
