"""A chat model behind an OpenAI-compatible HTTP endpoint (RAG_LLM__URL / --llm-url), streamed.

Written for llama.cpp's servers first (`python -m llama_cpp.server` from llama-cpp-python, and `llama-server`),
and kept to the standard API so that vLLM and Ollama work too: POST {url}/chat/completions with stream=true,
read as server-sent events (`data: {...}` lines, then `data: [DONE]`). httpx only; no openai package.

There is no lock around generation here: the server queues concurrent requests. llama-cpp-python's server by
default *interrupts* a running answer when another request arrives (token counting included): start it with
`--interrupt_requests False` when several questions may be answered at once. An interrupted answer is reported
as a ModelError, never passed off as a complete one. That server also runs one request at a time, token counts
included, so a request may wait behind other answers: RAG_LLM__REQUEST_TIMEOUT_S bounds every wait for the
server's next bytes, that queueing included.

Connecting, the server's identity and context, token counting and the mapping of failures to the package's
errors (a context overflow a QuestionError, an unreachable or failing server a ModelError naming the URL) are
rag.llm_server's ServerClient, which RemoteLLM extends with generation.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from rag.errors import ModelError, QuestionError
from rag.generation import GenerationEvent, GenerationStats, Message
from rag.llm_server import (  # noqa: F401 - api_base, estimate_tokens: re-exported for tests
    START_HINT,
    ServerClient,
    api_base,
    estimate_tokens,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- model


class RemoteLLM(ServerClient):
    """A ChatModel served over HTTP. Cheap to construct: the server is first asked on first use."""

    # -- generation

    def request_body(
        self, messages: Sequence[Message], *, max_tokens: int, temperature: float, stream: bool = True
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [dict(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": self.settings.llm.seed,
            # llama.cpp's servers default to 1.1; the in-process model uses none (1.0), so a llama.cpp server
            # answers as the local model does. Servers that do not know the field ignore it.
            "repeat_penalty": 1.0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def stream_chat(
        self, messages: Sequence[Message], *, max_tokens: int, temperature: float = 0.0
    ) -> Iterator[GenerationEvent]:
        """Yield text pieces as the server sends them, then one done event with the stats.

        Raises QuestionError when the prompt leaves no room for max_tokens in n_ctx (counted here, or refused by
        the server), ModelError when the server cannot be reached, fails, or stops mid-answer. Closing the
        iterator early closes the connection, and the server stops generating.
        """
        prompt_tokens = self.count_chat_tokens(messages)
        if prompt_tokens + max_tokens > self.n_ctx:
            raise QuestionError(
                f"the prompt (about {prompt_tokens} tokens) plus {max_tokens} answer tokens exceeds the model's context "
                f"({self.n_ctx} tokens): shorten the question, or give the server a larger context and set "
                "RAG_LLM__N_CTX to it"
            )
        body = self.request_body(messages, max_tokens=max_tokens, temperature=temperature)
        return self._generate(body, prompt_tokens)

    def _generate(self, body: dict[str, Any], prompt_tokens: int) -> Iterator[GenerationEvent]:
        stats = GenerationStats(prompt_tokens=prompt_tokens)
        started = time.perf_counter()
        chunks = 0
        usage: dict[str, Any] | None = None
        finish: str | None = None
        done = False
        # A connection of its own ("close"): after a stream that failed, llama-cpp-python's server reads the next
        # request sent on the same connection as the failed one's body, and drops both.
        request = self.client.build_request(
            "POST", self.url + "/chat/completions", json=body, headers={"Connection": "close"}
        )
        response = self._send(request, stream=True)
        try:
            if response.status_code != 200:
                response.read()
                raise self._chat_error(response)
            for line in response.iter_lines():
                kind, _, payload = line.partition(":")
                payload = payload.strip()
                if kind == "error":  # llama-server's SSE error event
                    raise self._stream_error(payload)
                if kind != "data" or not payload:
                    continue  # comments (": ping"), event:/id: lines, blank separators
                if payload == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(payload)
                except json.JSONDecodeError as e:
                    raise ModelError(f"the model server at {self.url} sent a line that is not JSON: {payload[:200]!r}") from e
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:
                    raise self._stream_error(payload)
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        if stats.first_token_s is None:
                            stats.first_token_s = time.perf_counter() - started
                        chunks += 1
                        yield GenerationEvent(text=text)
                    finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as e:
            during = "in the middle of an answer" if chunks else "while answering"
            raise self._unreachable(e, during) from e
        finally:
            response.close()
        if not done and chunks == 0 and finish is None:
            # llama-cpp-python's server fails a streamed request after sending its headers (an over-long prompt
            # among others) by ending the stream empty; asked without streaming it tells what went wrong.
            yield from self._diagnose(body, stats, started)
            return
        if not done and finish is None:
            raise ModelError(f"the model server at {self.url} stopped in the middle of an answer (the stream ended): {START_HINT}")
        if finish is None:
            raise ModelError(
                f"the model server at {self.url} ended this answer early without saying why (llama-cpp-python's server "
                "does that when another request arrives: start it with --interrupt_requests False): ask again"
            )
        stats.stop_reason = finish
        stats.prompt_tokens = int((usage or {}).get("prompt_tokens") or prompt_tokens)
        stats.completion_tokens = int((usage or {}).get("completion_tokens") or chunks)
        stats.total_s = time.perf_counter() - started
        yield GenerationEvent(done=True, stats=stats)

    def _diagnose(self, body: dict[str, Any], stats: GenerationStats, started: float) -> Iterator[GenerationEvent]:
        """Repeat a request whose stream ended empty without streaming: the server's error, or its answer."""
        logger.info("the stream from %s ended empty: asking again without streaming to see why", self.url)
        plain = {key: value for key, value in body.items() if key != "stream_options"}
        response = self._post("/chat/completions", {**plain, "stream": False})
        if response.status_code != 200:
            raise self._chat_error(response)
        try:
            result = response.json()
            choice = result["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise ModelError(f"the model server at {self.url} sent an answer that cannot be read ({e})") from e
        usage = result.get("usage") or {}
        stats.first_token_s = time.perf_counter() - started
        if text:
            yield GenerationEvent(text=text)
        stats.stop_reason = choice.get("finish_reason") or "stop"
        stats.prompt_tokens = int(usage.get("prompt_tokens") or stats.prompt_tokens)
        stats.completion_tokens = int(usage.get("completion_tokens") or 0)
        stats.total_s = time.perf_counter() - started
        yield GenerationEvent(done=True, stats=stats)
