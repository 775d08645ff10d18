"""``llmforge prompt MODEL "text"``: complete a prompt with a registered model, streamed to the
terminal as the tokens arrive (``POST /api/v1/models/{id}/completions`` with ``stream``).

llmforge prompt MODEL "Once upon a time" --max-tokens 64 --temperature 0.8 --seed 1
llmforge prompt MODEL "Name three colours" --chat      # the model's chat template
llmforge prompt MODEL --template qa --var question="Why is the sea deep?"   # a stored template
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

from services.api.completion_schemas import (
    ChatCompletionChunk,
    CompletionChoice,
    CompletionChunk,
    UsagePublic,
)
from services.cli.api import Api, ApiError
from services.cli.campaigns import parse_vars
from services.cli.client import api_client


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "stream_options": {"include_usage": True},
    }
    optional = {"top_k": args.top_k, "seed": args.seed, "stop": args.stop or None}
    return body | {k: v for k, v in optional.items() if v is not None}


def _print_stream(chunks: Iterator[CompletionChunk] | Iterator[ChatCompletionChunk]) -> int:
    """Print each chunk's text as it arrives, then the token counts: 0, or 1 for an error (an
    error answer before the stream, or a stream that failed midway)."""
    usage: UsagePublic | None = None
    try:
        for chunk in chunks:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                text = choice.text if isinstance(choice, CompletionChoice) else choice.delta.content
                print(text or "", end="", flush=True)
    except ApiError as e:
        print(f"\nllmforge prompt: {e}", file=sys.stderr)
        return 1
    print()
    if usage:
        print(
            f"[{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens]",
            file=sys.stderr,
        )
    return 0


def _source(args: argparse.Namespace) -> dict[str, Any]:
    """The text (as a prompt or a user message), or a stored template and its variables."""
    if (args.text is None) == (args.template is None):
        raise argparse.ArgumentTypeError("give the prompt's text or --template NAME, one of them")
    if args.template is None:
        if args.var:
            raise argparse.ArgumentTypeError("--var goes with --template")
        if args.chat:
            return {"messages": [{"role": "user", "content": args.text}]}
        return {"prompt": args.text}
    return {"prompt_template": args.template, "variables": parse_vars(args.var)}


def cmd_prompt(args: argparse.Namespace) -> int:
    try:
        body = _body(args) | _source(args)
    except argparse.ArgumentTypeError as e:
        print(f"llmforge prompt: {e}", file=sys.stderr)
        return 2
    with api_client(timeout=None) as http:
        api = Api(http)
        if args.chat:
            return _print_stream(api.stream_chat(body | {"model": args.model}))
        return _print_stream(api.stream_completion(args.model, body))


def add_prompt_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompt", help="complete a prompt with a registered model (streamed)")
    p.add_argument("model", help="a registered model's id (llmforge models list)")
    p.add_argument("text", nargs="?", help="the prompt (with --chat: your message)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, help="the same seed gives the same text")
    p.add_argument("--stop", action="append", help="a stop string (repeatable, up to 4)")
    p.add_argument("--chat", action="store_true", help="as a chat message, in the chat template")
    p.add_argument("--template", help="a stored prompt template (id or name) instead of text")
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="its variables")
    p.set_defaults(fn=cmd_prompt)
