"""Token ids to text deltas for streaming: incremental detokenizing and stop strings."""
from __future__ import annotations

from typing import Sequence


# The longest incomplete UTF-8 sequence is 3 bytes; a tokenizer may decode each of its bytes to its own U+FFFD.
_MAX_INCOMPLETE = 3


def _incomplete_tail(text: str) -> int:
    """How many trailing U+FFFD characters to hold back: they may be the bytes of a character whose remaining
    bytes are still to come (SentencePiece's byte fallback decodes <0xE2><0x80> as two of them, not one)."""
    n = 0
    while n < _MAX_INCOMPLETE and n < len(text) and text[len(text) - 1 - n] == "\ufffd":
        n += 1
    return n


class _TextStream:
    """Turns generated token ids into text deltas. Holds back what may still change: an incomplete UTF-8
    sequence (byte-fallback tokens) and a tail that could be the start of a stop string.

    Each token costs a decode of a few tokens, not of the whole prompt and reply: the text of tokens before
    `anchor` is final, so only a short window is decoded again, starting CONTEXT tokens before the anchor (what
    the new tokens' text depends on: SentencePiece drops a leading space only at the start of the decoded text).
    Decoding everything each time cost 260 us per token after a 2000-token prompt, a quarter of a GPU decode step.
    """

    CONTEXT = 4

    def __init__(self, tokenizer, prompt_ids, stop: Sequence[str]):
        self.tok, self.tokens = tokenizer, list(prompt_ids)
        # the caller's stops and the model file's own (bllama.stop_strings: a chat template's end-of-turn text)
        if isinstance(stop, str):  # stop="END" is one stop string (as in OpenAI's API), not "E", "N" and "D"
            stop = [stop]
        stop = list(stop or [])
        for s in stop:
            if not isinstance(s, str):
                raise TypeError(f"stop must be a string or a list of strings, got an item {s!r}")
        self.stop = [s for s in (*stop, *getattr(tokenizer, "stop_strings", ())) if s]
        self.anchor = len(self.tokens)  # tokens before it are decoded into self.final
        self.final = ""  # the continuation's text up to the anchor
        self.emitted = ""
        self.stopped = False

    def _decoded(self) -> str:
        """The continuation's text so far; its end may still be an incomplete character."""
        start = max(0, self.anchor - self.CONTEXT)
        head = self.tok.decode(self.tokens[start:self.anchor])
        while not head and start > 0:  # a window of control tokens only: reach back to real text
            start = max(0, start - self.CONTEXT)
            head = self.tok.decode(self.tokens[start:self.anchor])
        window = self.tok.decode(self.tokens[start:])
        # A prompt ending inside a character decodes differently once the reply completes it: take the reply alone.
        tail = window[len(head):] if window.startswith(head) else self.tok.decode(self.tokens[self.anchor:])
        if tail.endswith("\ufffd"):
            return self.final + tail
        self.final += tail
        self.anchor = len(self.tokens)
        return self.final

    def _text(self) -> str:
        text = self._decoded()
        for s in self.stop:
            i = text.find(s, max(0, len(self.emitted) - len(s)))  # the emitted text never holds a whole stop string
            if i >= 0:
                text, self.stopped = text[:i], True
        return text

    def _emit(self, text: str, upto: int) -> str:
        delta = text[len(self.emitted):upto] if upto > len(self.emitted) else ""
        self.emitted += delta
        return delta

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self._text()
        if self.stopped:
            return self._emit(text, len(text))
        safe = len(text) - _incomplete_tail(text)
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        return self._emit(text, safe)

    def flush(self) -> str:
        text = self._text()
        return self._emit(text, len(text))
