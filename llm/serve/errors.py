"""Why the engine refuses or ends a request (no torch here: the control plane imports these)."""

from __future__ import annotations


class ParamError(ValueError):
    """A request parameter is invalid; ``field`` names it (an API answers 422 there)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class QueueFull(RuntimeError):
    """The engine's queue is full; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineError(RuntimeError):
    """The engine failed or closed while a request was in it."""
