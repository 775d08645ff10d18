"""Chat messages become the prompt a fine-tune trained on, or what a Hugging Face chat template
renders."""

from __future__ import annotations

import pytest

from llm.finetune.data import Segment, tokenize_segments
from llm.finetune.templates import ALPACA_CHAT, chat_template
from llm.serve.chat import JinjaChat, Message, SegmentChat
from llm.tokenizer.bpe import eos_id, train_bpe

TEXT = "The king said that the queen would come to the castle. Hello world. " * 30


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT], vocab_size=300)


def test_the_prompt_is_the_fine_tunes_prompt_up_to_the_reply(tok) -> None:
    """The ids llm.finetune builds for a chat record, before its last (trained) reply."""
    messages = [
        Message("system", "Be brief."),
        Message("user", "Who comes?"),
        Message("assistant", "The queen."),
        Message("user", "When?"),
    ]
    template = chat_template(ALPACA_CHAT)
    segments = [
        Segment(template.render({"role": m.role, "content": m.content}), False)
        if m.role != "assistant"
        else Segment(m.content, True)
        for m in messages
    ] + [Segment("In the morning.", True)]
    trained = tokenize_segments(tok, segments, eos_id(tok), max_tokens=1000)
    got = SegmentChat.from_source("alpaca", eos_id(tok)).prompt_ids(messages, tok)
    assert got == trained.ids[: trained.prompt_len]
    assert tok.decode(got).endswith("### Response:\n")


def test_a_hugging_face_template_renders_with_a_generation_prompt(tok) -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    chat = JinjaChat(source, {"bos_token": ""})
    ids = chat.prompt_ids([Message("user", "Hello world")], tok)
    assert tok.decode(ids) == "<user>Hello world\n<assistant>"
    with pytest.raises(ValueError, match="chat template"):
        JinjaChat("{{ raise_exception('no system role') }}", {}).prompt_ids([], tok)
