"""What a request gets back from the engine: per-choice deltas, then the token usage.

A streaming client forwards each Delta as it comes; a non-streaming one folds them with
``Completion``, so both see the very same text by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenInfo:
    """One token of a choice: its text, its logprob and the most likely alternatives."""

    id: int
    text: str
    logprob: float | None  # None: the first prompt token (echo), which nothing predicts
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """What one choice adds in one engine step (text may be empty while a possible stop
    string is held back); finish_reason is set on its last delta: "stop" or "length"."""

    index: int
    text: str
    tokens: tuple[TokenInfo, ...] = ()
    finish_reason: str | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Choice:
    index: int
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Completion:
    """Deltas folded into whole choices (index order) and the usage."""

    choices: dict[int, Choice] = field(default_factory=dict)
    usage: Usage | None = None

    def add(self, delta: Delta) -> None:
        choice = self.choices.setdefault(delta.index, Choice(delta.index))
        choice.text += delta.text
        choice.tokens.extend(delta.tokens)
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason

    def ordered(self) -> list[Choice]:
        return [self.choices[i] for i in sorted(self.choices)]
