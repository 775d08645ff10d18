"""Chat messages -> the prompt's token ids, the way the model was tuned to read them.

Two formats:

- ``SegmentChat``: llmforge's fine-tuning format (``llm.finetune``): each system or user message
  rendered by the fine-tune's chat template, each earlier assistant reply verbatim and closed by
  EOS, every segment tokenized on its own, exactly as ``llm.finetune.data`` built the training
  examples. The default is the fine-tunes' default template ("alpaca"), whose user turn ends with
  the header of the reply it asks for.
- ``JinjaChat``: a Hugging Face ``chat_template`` (tokenizer_config.json of an imported model),
  rendered sandboxed with ``add_generation_prompt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm.finetune.templates import Template, chat_template

if TYPE_CHECKING:
    import tokenizers

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    role: str
    content: str


class ChatFormat(Protocol):
    def prompt_ids(self, messages: Sequence[Message], tok: tokenizers.Tokenizer) -> list[int]: ...


@dataclass(frozen=True)
class SegmentChat:
    template: Template
    eos_id: int | None

    @classmethod
    def from_source(cls, source: str, eos_id: int | None) -> SegmentChat:
        return cls(chat_template(source), eos_id)

    def prompt_ids(self, messages: Sequence[Message], tok: tokenizers.Tokenizer) -> list[int]:
        ids: list[int] = []
        for i, message in enumerate(messages):
            if message.role == "assistant":
                ids += tok.encode(message.content, add_special_tokens=False).ids
                # a closed reply ends with EOS, as trained; a last one is continued instead
                if i < len(messages) - 1 and self.eos_id is not None:
                    ids.append(self.eos_id)
            else:
                text = self.template.render({"role": message.role, "content": message.content})
                ids += tok.encode(text, add_special_tokens=False).ids
        return ids


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


# Hugging Face renders chat templates the same way: trimmed blocks, sandboxed, with
# raise_exception for templates that reject a conversation.
_HF_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_HF_ENV.globals["raise_exception"] = _raise


@dataclass(frozen=True)
class JinjaChat:
    source: str
    special: dict[str, Any]  # bos_token, eos_token, ... as the template expects them

    def prompt_ids(self, messages: Sequence[Message], tok: tokenizers.Tokenizer) -> list[int]:
        rendered = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = _HF_ENV.from_string(self.source).render(
                messages=rendered, add_generation_prompt=True, **self.special
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"the model's chat template rejects these messages: {e}") from e
        # the template writes the special tokens itself (BOS included)
        return tok.encode(text, add_special_tokens=False).ids
