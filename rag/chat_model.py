"""Choosing the chat model the settings ask for: a model server (rag.llm_remote) or the local GGUF (rag.llm).

It sits above both, so neither has to import the other.
"""

from __future__ import annotations

from rag.config import Settings
from rag.generation import ChatModel
from rag.llm import LocalLLM


def chat_model(settings: Settings) -> ChatModel:
    """The model the settings ask for: a model server when RAG_LLM__URL is set (RemoteLLM), else the local GGUF."""
    if settings.llm.url:
        from rag.llm_remote import RemoteLLM

        return RemoteLLM(settings)
    return LocalLLM(settings)
