"""What every chat model shares: chat messages, streamed generation events and stats, and the ChatModel protocol.

The ground floor of the model side: rag.llm (the local GGUF model), rag.llm_server and rag.llm_remote (a model
server) and the answering code all take these from here, and this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rag.types import ModelInfo

Message = dict[str, str]


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    stop_reason: str = ""  # "stop" (end of turn), "length" (max_tokens)


@dataclass
class GenerationEvent:
    """One step of a streamed generation: a text piece, or (done=True) the final stats."""

    text: str = ""
    done: bool = False
    stats: GenerationStats = field(default_factory=GenerationStats)


class ChatModel(Protocol):
    """What the answering code needs from a model (LocalLLM, or a scripted fake in tests)."""

    @property
    def n_ctx(self) -> int: ...

    def info(self) -> ModelInfo: ...

    def count_tokens(self, text: str) -> int: ...

    def count_chat_tokens(self, messages: Sequence[Message]) -> int: ...

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> Iterator[GenerationEvent]: ...
