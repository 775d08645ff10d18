"""Named prompt templates: a Jinja2 query, an optional system message and few-shot examples,
rendered with variables into one text prompt and into the same conversation as chat messages.

Rendering is sandboxed (Jinja2's immutable sandbox: no attribute escapes, no mutation of the
values passed in) with ``StrictUndefined``, so a variable the caller left out is an error that
names it instead of an empty string. A template declares its variables (or they are read off its
source); a missing one, or one it does not have, is a ``PromptError`` whose ``loc`` names it.

The text prompt joins, in order, the system message, each example (its input, the target
delimiter, its output) and the query with the few-shot delimiter — lm-evaluation-harness's
layout (``"\\n\\n"`` between shots, ``" "`` before a target). As chat messages: the system
message, each example as a user turn and an assistant reply, then the query as a user turn.

Torch-free: the control plane imports it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

Loc = tuple[str | int, ...]
MAX_RENDERED = 1_000_000  # characters of one rendered prompt
_MAX_REPEAT = 100_000  # "ab" * n, [x] * n: at most this many characters or items
_MAX_EXPONENT = 256
_UNDEFINED = re.compile(r"'([^']+)' is undefined")


class PromptError(ValueError):
    """A template that cannot be stored or rendered: ``loc`` is where (``("template",)``,
    ``("variables", "name")``, ``("examples", 2, "variables")``), ``message`` why."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a guard on the operators that make huge values cheaply."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"an exponent above {_MAX_EXPONENT} is not allowed here")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                repeats = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if repeats and len(seq) * times > _MAX_REPEAT:
                    raise SecurityError(
                        f"repeating a value to more than {_MAX_REPEAT} items is not allowed"
                    )
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _compile(source: str, loc: Loc) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise PromptError(loc, f"template syntax error on line {e.lineno}: {e.message}") from e


def referenced(source: str, loc: Loc = ("template",)) -> set[str]:
    """The variables a template's source reads (not those it sets, nor the sandbox's globals)."""
    try:
        parsed = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as e:
        raise PromptError(loc, f"template syntax error on line {e.lineno}: {e.message}") from e
    return meta.find_undeclared_variables(parsed) - set(_ENV.globals)


@dataclass(frozen=True)
class Example:
    """One shot: ``input`` as literal text, or ``variables`` rendered through the template;
    ``output`` is the answer, verbatim."""

    output: str
    input: str | None = None
    variables: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Rendered:
    text: str
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class PromptTemplate:
    template: str
    system: str | None = None
    examples: Sequence[Example] = ()
    variables: Sequence[str] | None = None  # None: the ones the template and system read
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fewshot_delimiter: str = "\n\n"
    target_delimiter: str = " "

    def declared(self) -> list[str]:
        """The declared variables, else those the template and system message read (sorted)."""
        if self.variables is not None:
            return list(self.variables)
        found = referenced(self.template)
        if self.system is not None:
            found |= referenced(self.system, ("system",))
        return sorted(found)

    def check(self) -> list[str]:
        """Compile everything and render every example; return the declared variables. Raises
        PromptError for a syntax error, a read variable that is not declared, a default or an
        example variable that is not one, or an example that does not render."""
        _compile(self.template, ("template",))
        if self.system is not None:
            _compile(self.system, ("system",))
        names = self.declared()
        if len(set(names)) != len(names):
            raise PromptError(("variables",), "a variable is declared twice")
        if self.variables is not None:
            reads = [("template", referenced(self.template))]
            if self.system is not None:
                reads.append(("system", referenced(self.system, ("system",))))
            for where, found in reads:
                for name in sorted(found - set(names)):
                    raise PromptError(
                        (where,),
                        f"the {where} reads '{name}', which is not a declared variable "
                        f"(declared: {', '.join(names) or 'none'})",
                    )
        for name in self.defaults:
            if name not in names:
                raise PromptError(("defaults", name), f"'{name}' is not a declared variable")
        for i, example in enumerate(self.examples):
            if (example.input is None) == (example.variables is None):
                raise PromptError(("examples", i), "give an example's input or its variables")
            if example.variables is not None:
                self._query(example.variables, ("examples", i, "variables"))
        return names

    def _values(self, variables: Mapping[str, Any], loc: Loc) -> dict[str, Any]:
        names = self.declared()
        for name in variables:
            if name not in names:
                raise PromptError(
                    (*loc, name),
                    f"'{name}' is not a variable of this template "
                    f"(its variables: {', '.join(names) or 'none'})",
                )
        values = {**self.defaults, **variables}
        for name in names:
            if name not in values:
                raise PromptError((*loc, name), f"missing variable '{name}'")
        return values

    def _render(self, source: str, values: Mapping[str, Any], loc: Loc, where: Loc) -> str:
        try:
            text = _compile(source, where).render(values)
        except jinja2.UndefinedError as e:
            name = _UNDEFINED.search(str(e))
            at = (*loc, name.group(1)) if name else loc
            raise PromptError(at, f"missing variable: {e}") from e
        except PromptError:
            raise
        except Exception as e:  # SecurityError, a TypeError or ZeroDivisionError in the template
            raise PromptError(where, f"the template failed to render: {e}") from e
        if len(text) > MAX_RENDERED:
            raise PromptError(where, f"the rendered prompt exceeds {MAX_RENDERED} characters")
        return text

    def _query(self, variables: Mapping[str, Any], loc: Loc) -> str:
        return self._render(self.template, self._values(variables, loc), loc, ("template",))

    def render(self, variables: Mapping[str, Any], loc: Loc = ("variables",)) -> Rendered:
        """The prompt as text and as chat messages; ``loc`` prefixes a variable's errors."""
        query = self._query(variables, loc)
        system = None
        if self.system is not None:
            system = self._render(self.system, self._values(variables, loc), loc, ("system",))
        shots: list[tuple[str, str]] = []
        for i, example in enumerate(self.examples):
            if example.variables is not None:
                shots.append(
                    (self._query(example.variables, ("examples", i, "variables")), example.output)
                )
            else:
                shots.append((example.input or "", example.output))
        parts = [system] if system else []
        parts += [f"{given}{self.target_delimiter}{answer}" for given, answer in shots]
        text = self.fewshot_delimiter.join([*parts, query])
        if len(text) > MAX_RENDERED:
            raise PromptError(("template",), f"the prompt exceeds {MAX_RENDERED} characters")
        messages = [{"role": "system", "content": system}] if system else []
        for given, answer in shots:
            messages += [
                {"role": "user", "content": given},
                {"role": "assistant", "content": answer},
            ]
        messages.append({"role": "user", "content": query})
        return Rendered(text, messages)
