"""The JSON between the control plane and a Ray Serve replica of a deployed model.

The control plane posts a request (``request_json``), naming a LoRA adapter of the deployed base
where the request is for one (``AdapterRef``: the replica serves it on its base); the replica
answers either an error (a non-200 status with ``{"error": {...}}``: a ParamError naming its
field, QueueFull with its retry delay, or an EngineError), or 200 with newline-delimited JSON as
the engine produces it: ``{"d": [delta, ...]}`` per engine step, ``{"usage": [prompt,
completion]}`` at the end, or ``{"error": {...}}`` where generation failed midway. The deltas are
the engine's own (``llm.serve.outputs``), so the routes shape them into OpenAI's bodies and
chunks exactly as they do for an engine in their own process.

No torch here: the control plane imports it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from llm.serve.chat import Message
from llm.serve.errors import EngineError, ParamError, QueueFull
from llm.serve.outputs import Delta, TokenInfo, Usage
from llm.serve.params import SamplingParams
from llm.serve.requests import ChatRequest, CompletionRequest, Request

CONTENT_TYPE = "application/x-ndjson"


@dataclass(frozen=True)
class AdapterRef:
    """A registered LoRA adapter of a deployed base model, to be served by the base's replicas:
    what the control plane would load it with in its own process."""

    id: str
    uri: str
    tokenizer_uri: str | None = None
    chat_template: str | None = None

    @property
    def key(self) -> str:
        return f"{self.id}:{self.uri}"


def request_json(request: Request, adapter: AdapterRef | None = None) -> dict[str, Any]:
    params = asdict(request.params) | {"stop": list(request.params.stop)}
    found: dict[str, Any]
    if isinstance(request, CompletionRequest):
        found = {"prompt": request.prompt, "params": params, "truncate": request.truncate}
    else:
        found = {
            "messages": [[m.role, m.content] for m in request.messages],
            "params": params,
            "max_tokens": request.max_tokens,
            "truncate": request.truncate,
        }
    if adapter is not None:
        found["adapter"] = asdict(adapter)
    return found


def parse_adapter(body: dict[str, Any]) -> AdapterRef | None:
    """The adapter a request is for (None: the deployed model itself)."""
    found = body.get("adapter")
    if found is None:
        return None
    try:
        if not isinstance(found, dict) or not found.get("id") or not found.get("uri"):
            raise ValueError("needs an id and a uri")
        return AdapterRef(
            str(found["id"]),
            str(found["uri"]),
            str(found["tokenizer_uri"]) if found.get("tokenizer_uri") else None,
            str(found["chat_template"]) if found.get("chat_template") else None,
        )
    except ValueError as e:
        raise ParamError("adapter", f"not an adapter reference: {e}") from e


def parse_request(body: dict[str, Any]) -> Request:
    """The request a control plane sent; a body of another shape is a ParamError."""
    try:
        raw = dict(body["params"])
        params = SamplingParams(**(raw | {"stop": tuple(raw.get("stop", ()))}))
        truncate = bool(body.get("truncate", False))
        if "messages" in body:
            messages = tuple(Message(str(role), str(text)) for role, text in body["messages"])
            return ChatRequest(messages, params, body.get("max_tokens"), truncate)
        return CompletionRequest(body["prompt"], params, truncate)
    except (KeyError, TypeError, ValueError) as e:
        raise ParamError("body", f"not a completion request: {e}") from e


def _token(t: TokenInfo) -> list[Any]:
    return [t.id, t.text, t.logprob, [list(top) for top in t.top]]


def delta_json(delta: Delta) -> dict[str, Any]:
    return {
        "i": delta.index,
        "t": delta.text,
        "k": [_token(t) for t in delta.tokens],
        "f": delta.finish_reason,
    }


def parse_delta(item: dict[str, Any]) -> Delta:
    tokens = tuple(
        TokenInfo(int(i), str(text), lp, tuple((str(a), float(b)) for a, b in top))
        for i, text, lp, top in item["k"]
    )
    return Delta(int(item["i"]), str(item["t"]), tokens, item["f"])


def line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


def deltas_line(deltas: list[Delta]) -> bytes:
    return line({"d": [delta_json(d) for d in deltas]})


def usage_line(usage: Usage | None) -> bytes:
    return line({"usage": [usage.prompt_tokens, usage.completion_tokens] if usage else None})


def error_json(error: Exception) -> dict[str, Any]:
    found: dict[str, Any]
    if isinstance(error, ParamError):
        found = {"type": "param", "field": error.field, "message": error.message}
    elif isinstance(error, QueueFull):
        found = {"type": "busy", "message": str(error), "retry_after_s": error.retry_after_s}
    else:
        found = {"type": "engine", "message": str(error)}
    return {"error": found}


def error_status(error: Exception) -> int:
    if isinstance(error, ParamError):
        return 422
    return 429 if isinstance(error, QueueFull) else 503


def parse_error(item: dict[str, Any]) -> Exception:
    """The exception a replica's error stands for (an EngineError for one it does not know)."""
    found = item.get("error")
    if not isinstance(found, dict):
        return EngineError(f"the deployment answered {str(item)[:200]}")
    message = str(found.get("message", ""))
    if found.get("type") == "param":
        return ParamError(str(found.get("field", "body")), message)
    if found.get("type") == "busy":
        return QueueFull(message, int(found.get("retry_after_s", 1)))
    return EngineError(message)
