"""Preference records for DPO from JSON or JSONL: read, mapped to canonical fields, checked.

A record is ``{"prompt", "chosen", "rejected"}`` (extra keys are ignored, so an export from the
ratings store may carry its ids and models along):

  prompt    a string: an instruction, rendered with SFT's instruction template (an optional
            ``input`` field fills the template's input), or with format "chat" a single user
            message; or a list of {"role", "content"} messages rendered with SFT's chat template
            (earlier assistant turns are context; the list must not end with an assistant turn,
            since the responses answer it)
  chosen    the preferred response: a string, or a list of one assistant message (the
            conversational form of Hugging Face TRL's preference datasets)
  rejected  the other response, in the same form

A record that cannot be used becomes a ``Rejection`` with a reason code, never an exception.
``preferences_from_ratings`` turns stored pairwise ratings into such records. No torch and no
tokenizer here: the control plane validates specs and exports ratings with this module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llm.finetune.records import ROLES, Chat, Instruction, Message, Rejection, _Bad, _text

PREFERENCE_FIELDS = ("prompt", "input", "chosen", "rejected", "role", "content")


def preference_field_map(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The canonical preference fields mapped to the file's keys (identity unless overridden)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(PREFERENCE_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown fields {unknown} in the field map; known for preference records: "
            f"{list(PREFERENCE_FIELDS)}"
        )
    return {name: overrides.get(name, name) for name in PREFERENCE_FIELDS}


@dataclass(frozen=True)
class Preference:
    prompt: Instruction | Chat  # the context (an Instruction's output is unused, "")
    chosen: str
    rejected: str


def _message(item: Any, position: int, fields: Mapping[str, str]) -> Message:
    if not isinstance(item, dict):
        raise _Bad("bad_message", f"message {position} is {type(item).__name__}, not an object")
    try:
        role = _text(item, fields["role"], required=True, nonempty=True)
        content = _text(item, fields["content"], required=True, nonempty=False)
    except _Bad as e:
        raise _Bad("bad_message", f"message {position}: {e.detail}") from None
    if role not in ROLES:
        raise _Bad("bad_role", f"message {position} has role {role!r}; expected one of {ROLES}")
    return Message(role, content)


def _prompt(record: dict[str, Any], fields: Mapping[str, str], fmt: str) -> Instruction | Chat:
    key = fields["prompt"]
    value = record.get(key)
    if value is None:
        raise _Bad("missing_field", f"missing field {key!r}")
    if isinstance(value, str):
        if not value.strip():
            raise _Bad("empty_prompt", f"field {key!r} is empty")
        extra = _text(record, fields["input"], required=False, nonempty=False)
        if fmt == "chat":
            if extra:
                raise _Bad("wrong_type", f"field {fields['input']!r} goes with instructions")
            return Chat((Message("user", value),))
        return Instruction(value, extra, "")
    if not isinstance(value, list) or fmt == "instruction":
        expected = "a string" if fmt == "instruction" else "a string or a list of messages"
        raise _Bad("wrong_type", f"field {key!r} is {type(value).__name__}, expected {expected}")
    if not value:
        raise _Bad("empty_prompt", f"field {key!r} has no message")
    messages = tuple(_message(item, i, fields) for i, item in enumerate(value))
    if messages[-1].role == "assistant":
        raise _Bad(
            "prompt_ends_with_assistant",
            f"the last message of {key!r} is the assistant's; the responses answer a user turn",
        )
    return Chat(messages)


def _response(record: dict[str, Any], key: str, fields: Mapping[str, str]) -> str:
    value = record.get(key)
    if value is None:
        raise _Bad("missing_field", f"missing field {key!r}")
    if isinstance(value, list):  # TRL's conversational form: [{"role": "assistant", ...}]
        if len(value) != 1:
            raise _Bad("wrong_type", f"field {key!r} must hold one assistant message")
        message = _message(value[0], 0, fields)
        if message.role != "assistant":
            raise _Bad("bad_role", f"field {key!r} holds a {message.role} message")
        value = message.content
    if not isinstance(value, str):
        raise _Bad("wrong_type", f"field {key!r} is {type(value).__name__}, expected a string")
    if not value.strip():
        raise _Bad(f"empty_{key}", f"field {key!r} is empty")
    return value


def parse_preference(
    index: int, record: Any, fields: Mapping[str, str], fmt: str = "auto"
) -> Preference | Rejection:
    """One raw record as a Preference, or the Rejection saying why not."""
    if isinstance(record, Rejection):
        return record
    try:
        if not isinstance(record, dict):
            raise _Bad("wrong_type", f"record is {type(record).__name__}, expected an object")
        prompt = _prompt(record, fields, fmt)
        chosen = _response(record, fields["chosen"], fields)
        rejected = _response(record, fields["rejected"], fields)
        if chosen == rejected:
            # equal responses give DPO a zero gradient: no preference to learn
            raise _Bad("identical_responses", "chosen and rejected are the same text")
    except _Bad as e:
        return Rejection(index, e.reason, e.detail, record)
    return Preference(prompt, chosen, rejected)


# --- from the ratings store ---------------------------------------------------------------------


def preferences_from_ratings(
    ratings: Iterable[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairwise ratings (prompt, model_a/b, completion_a/b, winner "a" | "b" | "tie", id, task)
    as preference records, and counts. A tie states no preference, and a pair whose two
    completions are equal or one is empty teaches nothing: those are dropped and counted."""
    records: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    total = 0
    for rating in ratings:
        total += 1
        winner = rating["winner"]
        if winner not in ("a", "b"):
            dropped["tie"] += 1
            continue
        loser = "b" if winner == "a" else "a"
        chosen, rejected = rating[f"completion_{winner}"], rating[f"completion_{loser}"]
        if not chosen.strip() or not rejected.strip():
            dropped["empty_completion"] += 1
            continue
        if chosen == rejected:
            dropped["identical_completions"] += 1
            continue
        records.append(
            {
                "prompt": rating["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "chosen_model": rating[f"model_{winner}"],
                "rejected_model": rating[f"model_{loser}"],
                "rating": rating.get("id"),
                "task": rating.get("task"),
            }
        )
    stats = {"ratings": total, "records": len(records), "dropped": dict(dropped)}
    return records, stats
