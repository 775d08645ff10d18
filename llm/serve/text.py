"""A choice's text as its tokens arrive: what is safe to send now, and where a stop string
cuts it.

Text is sent only once no later token can change it: a trailing U+FFFD may be an incomplete UTF-8
character that the next byte-level token finishes, and a tail that could still grow into a
stop string is held back. The completion ends before the stop string (OpenAI's behaviour).

Only the last ``MAX_INCOMPLETE`` replacement characters are held: an incomplete character is at
most 3 bytes, which a byte-level decoder (GPT-2's, Rust's ``from_utf8_lossy``) shows as one
U+FFFD and a byte-fallback one (Llama's SentencePiece) as at most three. Replacement characters
before those stand for bytes that no later byte can make valid (a model emitting stray
continuation bytes), so they go out as they come; holding all of them held such a choice's whole
text until its end, and its first token's time with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
MAX_INCOMPLETE = 3  # bytes of a UTF-8 character that can still be waiting for the rest


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of text's longest suffix that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class StopText:
    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.decode, self.stops = decode, tuple(stops)
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.text = ""
        self.longest = max((len(s) for s in self.stops), default=0)

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; return the newly safe text and whether a stop string ended the text."""
        self.ids.append(token)
        self.text = self.decode(self.ids)
        if self.stops:
            # the text already sent holds no whole stop string, so only its tail can start one
            start = max(0, self.sent - self.longest + 1)
            found = [i for s in self.stops if (i := self.text.find(s, start)) >= 0]
            if found:
                end = min(found)
                return self._take(end), True
        trailing = len(self.text) - len(self.text.rstrip(REPLACEMENT))
        safe = len(self.text) - min(trailing, MAX_INCOMPLETE)
        safe -= _held_back(self.text[:safe], self.stops)
        return self._take(safe), False

    def flush(self) -> str:
        """The text held back, at the end of a choice that no stop string ended."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        if end <= self.sent:
            return ""
        piece = self.text[self.sent : end]
        self.sent = end
        return piece
