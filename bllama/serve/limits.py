"""Every limit `bllama serve` enforces, with its command-line flag (docs/security.md explains each)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


# A request's line and headers, in bytes. h11 (uvicorn's parser) holds at most this much of headers that have not
# ended, but parses headers that arrive whole in one read (up to asyncio's 256 KiB) whatever their size; the Guard
# refuses those beyond it too, so the limit is the headers' size, not the size of the pieces they came in.
MAX_HEADER_BYTES = 16 << 10


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 4 << 20  # --max-body-bytes: a larger body is refused (413) before it is read
    max_prompt_chars: Optional[int] = None  # --max-prompt-chars: default 32 x the context length; checked before
    # tokenizing (a prompt that long cannot fit unless its tokens average more than 32 characters)
    max_stop: int = 16  # --max-stop: stop strings per request
    max_stop_chars: int = 256  # --max-stop-chars: characters per stop string
    max_n: int = 16  # --max-n: choices per request (each one sequence)
    max_queue: int = 64  # --max-queue: sequences waiting for a slot; beyond: 429 with Retry-After
    max_tokenizing: int = 2  # --max-tokenizing: prompts over 1 KiB tokenized at once (the rest wait, counted in the
    # queue); shorter ones are tokenized on the event loop
    max_connections: int = 256  # --max-connections: open connections; beyond: 503 with Retry-After
    header_timeout_s: float = 10.0  # --header-timeout: from connect (or the previous reply) to the end of headers
    body_timeout_s: float = 30.0  # --body-timeout: to receive the whole body once the headers are in
    client_timeout_s: float = 60.0  # --client-timeout: a reply the client stops reading for this long is dropped
    keep_alive_s: float = 5.0  # --keep-alive: an idle connection between requests is closed after this

    def __post_init__(self):
        for name, value in vars(self).items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    def prompt_chars(self, context_length: int) -> int:
        return self.max_prompt_chars or 32 * context_length
