"""The client side of an OpenAI-compatible model server, all but generation (rag.llm_remote's RemoteLLM).

ServerClient holds the URL and one shared httpx client, sends requests (once more when a kept-alive connection
turns out closed), asks the server who it is (/models, /props), counts tokens, and maps failures to errors.

What the answering code needs beyond generation, and where it comes from:
- token counts, to fit the prompt: the server's own tokenizer where it has one (llama-cpp-python's
  POST /extras/tokenize {"input"}, llama-server's and vLLM's POST /tokenize), probed once; otherwise
  `estimate_tokens`, an over-estimate. A chat's count adds a fixed allowance per message for the chat template
  (see TEMPLATE_TOKENS_PER_MESSAGE), since the server applies a template the client cannot see.
- n_ctx: llama-server's GET /props, or vLLM's max_model_len in /models; llama-cpp-python's server does not say,
  and neither does Ollama: then RAG_LLM__N_CTX (set it to the server's context size).

Failures become the package's errors: the server's context-overflow refusal a QuestionError (a clear refusal of
this question); a server that cannot be reached, times out or dies mid-answer a ModelError naming the URL.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from rag.config import Settings
from rag.errors import ConfigError, ModelError, QuestionError
from rag.generation import Message
from rag.types import ModelInfo

logger = logging.getLogger(__name__)

#: Chat-template tokens allowed per message (role markers, separators) and once for the reply's opening, on top of
#: the tokens of the message contents. Measured for the default SmolLM2-135M-Instruct (ChatML): a system + user
#: chat costs 14 tokens over its contents (7 a message, the assistant opening included); 4 turns cost 25.
#: 8 + 8 per reply gives 24 and 40: conservative, with room for templates a little heavier than ChatML.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_REPLY = 8
#: Added when a chat has no system message: some templates (SmolLM2's, 16 tokens) then insert a default one.
DEFAULT_SYSTEM_TOKENS = 24

#: Which tokenizer endpoints are tried, in order (paths from the server's root, not from /v1).
TOKENIZE_ENDPOINTS = ("/extras/tokenize", "/tokenize")
ESTIMATE = "estimate"  # the cached probe result when the server offers no tokenizer

START_HINT = (
    "is the model server running? Start it with `python -m llama_cpp.server --model MODEL.gguf --host 127.0.0.1 "
    "--port 8080 --n_ctx 2048 --interrupt_requests False`, or unset RAG_LLM__URL (no --llm-url) to run the model "
    "in this process"
)

_OVERFLOW = re.compile(r"context|too (long|large)|maximum.*tokens|tokens.*exceed", re.IGNORECASE)
_PIECES = re.compile(r"[A-Za-z]+|\s+|[^\sA-Za-z]")


# ------------------------------------------------------------------------------------------- helpers


def api_base(url: str) -> str:
    """The OpenAI-style base URL, ending in /v1 ('http://h:8080' and 'http://h:8080/' become 'http://h:8080/v1').

    ConfigError for anything but an http(s) URL with a host.
    """
    text = (url or "").strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"RAG_LLM__URL / --llm-url {url!r} is not a model server URL: give one like http://127.0.0.1:8080/v1"
        )
    text = text.rstrip("/")
    return text if parts.path.strip("/") else text + "/v1"


def server_root(base: str) -> str:
    """Where non-OpenAI routes (/props, /tokenize, /extras/...) live: the base without its trailing /v1."""
    return base[: -len("/v1")] if base.endswith("/v1") else base


def estimate_tokens(text: str) -> int:
    """An over-estimate of a text's tokens for servers that do not tokenize for us (Ollama).

    A byte-level BPE never spends more than one token per byte, so digits, punctuation, symbols and non-ASCII
    bytes count one each (a 135M model's tokenizer splits digits one by one); a run of ASCII letters counts one
    token per 4 letters; a single space before a word counts nothing (it joins the word), other whitespace one per
    character. On every line of the bundled corpus this is at or above SmolLM2's real count (about 1.5x it in
    total); a run of rare letter sequences can still exceed it, and then the server's own refusal is the backstop.
    """
    tokens = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        if piece.isascii() and piece.isalpha():
            tokens += math.ceil(len(piece) / 4)
        elif piece.isspace():
            after = text[match.end() : match.end() + 1]
            tokens += 0 if piece == " " and after.isascii() and after.isalpha() else len(piece)
        else:
            tokens += len(piece.encode("utf-8"))
    return tokens


def _server_message(response: httpx.Response) -> str:
    """The error text a server put in its response ({"error": {"message"}}, {"error": "..."}, {"detail"}...)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    return _error_text(body)


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(error, dict):
            return str(error.get("message") or error.get("type") or error)[:300]
        return str(error)[:300]
    return str(body)[:300]


def _is_overflow(body: Any, message: str) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and (
        error.get("code") == "context_length_exceeded" or error.get("type") == "exceed_context_size_error"
    ):
        return True
    return bool(_OVERFLOW.search(message))


# -------------------------------------------------------------------------------------------- client


class ServerClient:
    """A connection to a model server; RemoteLLM adds generation. Cheap to construct: the server is asked on first use."""

    def __init__(self, settings: Settings):
        if not settings.llm.url:
            raise ConfigError("RemoteLLM needs RAG_LLM__URL (or --llm-url)")
        self.settings = settings
        self.url = api_base(settings.llm.url)
        self.root = server_root(self.url)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()  # guards lazy state only, never held while generating
        self._model_id: str | None = settings.llm.server_model
        self._n_ctx: int | None = None
        self._tokenizer: str | None = None  # an endpoint of TOKENIZE_ENDPOINTS, or ESTIMATE, once probed
        self._count = functools.lru_cache(maxsize=8192)(self._count_uncached)

    # -- HTTP

    def _new_client(self) -> httpx.Client:
        timeout = self.settings.llm.request_timeout_s
        headers = {"Authorization": f"Bearer {self.settings.llm.api_key}"} if self.settings.llm.api_key else {}
        # trust_env=False: no proxy from the environment between this process and its model server
        return httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), headers=headers, trust_env=False)

    @property
    def client(self) -> httpx.Client:
        """One client (a pool of kept-alive connections) for every thread: httpx's Client is thread-safe."""
        with self._lock:
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _unreachable(self, e: httpx.HTTPError, during: str = "") -> ModelError:
        if isinstance(e, httpx.TimeoutException):
            reason = f"no answer within {self.settings.llm.request_timeout_s:g} s (RAG_LLM__REQUEST_TIMEOUT_S)"
        elif isinstance(e, httpx.ConnectError):
            reason = f"cannot connect: {e}"
        elif isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
            reason = "the connection was closed"
        else:
            reason = f"{type(e).__name__}: {e}"
        where = f" {during}" if during else ""
        return ModelError(f"the model server at {self.url} failed{where} ({reason}): {START_HINT}")

    def _http_error(self, response: httpx.Response, what: str) -> ModelError:
        status = response.status_code
        message = _server_message(response)
        if status in (401, 403):
            return ModelError(f"the model server at {self.url} refused {what} ({status} {message}): set RAG_LLM__API_KEY")
        return ModelError(f"the model server at {self.url} answered {status} to {what}: {message}")

    def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send once more when a kept-alive connection turns out closed before any answer came (a server may
        close an idle one); every other failure is a ModelError naming the URL."""
        for attempt in (1, 2):
            try:
                return self.client.send(request, stream=stream)
            except httpx.RemoteProtocolError as e:
                if attempt == 2:
                    raise self._unreachable(e) from e
                logger.debug("model server %s closed a kept-alive connection: sending again", self.url)
            except httpx.HTTPError as e:
                raise self._unreachable(e) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _get(self, path: str, *, root: bool = False) -> httpx.Response:
        return self._send(self.client.build_request("GET", (self.root if root else self.url) + path))

    def _post(self, path: str, body: dict[str, Any], *, root: bool = False) -> httpx.Response:
        return self._send(self.client.build_request("POST", (self.root if root else self.url) + path, json=body))

    # -- identity

    def models(self) -> list[dict[str, Any]]:
        """The server's GET /models list; a ModelError (naming the URL and what to do) when it does not answer."""
        response = self._get("/models")
        if response.status_code != 200:
            raise self._http_error(response, "GET /models")
        try:
            data = response.json().get("data")
            if not isinstance(data, list):
                raise ValueError("no data list")
        except (ValueError, AttributeError) as e:
            raise ModelError(f"{self.url}/models did not answer like an OpenAI-compatible server ({e}): {START_HINT}") from e
        return [m for m in data if isinstance(m, dict) and m.get("id")]

    def check(self) -> str:
        """Ask the server once, before any question: the model id used. ModelError when it cannot be used."""
        models = self.models()
        ids = [str(m["id"]) for m in models]
        wanted = self.settings.llm.server_model
        if wanted and wanted not in ids:
            raise ModelError(
                f"the model server at {self.url} has no model {wanted!r} (it lists: {', '.join(ids) or 'none'}): "
                "fix RAG_LLM__SERVER_MODEL / --model"
            )
        if not ids:
            raise ModelError(f"the model server at {self.url} lists no model at /models: load one into it")
        with self._lock:
            self._model_id = wanted or ids[0]
            entry = next(m for m in models if str(m["id"]) == self._model_id)
            if self._n_ctx is None and isinstance(entry.get("max_model_len"), int):  # vLLM says
                self._n_ctx = int(entry["max_model_len"])
        return self._model_id

    @property
    def model_id(self) -> str:
        if self._model_id is None:
            self.check()
        assert self._model_id is not None
        return self._model_id

    @property
    def name(self) -> str:
        return self.model_id

    def info(self) -> ModelInfo:
        """The server's model id; sha256 is None: the client cannot see the weights."""
        return ModelInfo(name=self.model_id, sha256=None)

    @property
    def n_ctx(self) -> int:
        """The server's context size where it says (llama-server /props, vLLM max_model_len), else RAG_LLM__N_CTX."""
        if self._n_ctx is None:
            n_ctx = self._props_n_ctx()
            if n_ctx is None:
                self.check()  # vLLM gives max_model_len in /models
            with self._lock:
                if self._n_ctx is None:
                    self._n_ctx = n_ctx or self.settings.llm.n_ctx
                    logger.info("model server %s: context %d tokens", self.url, self._n_ctx)
        return self._n_ctx

    def _props_n_ctx(self) -> int | None:
        response = self._get("/props", root=True)
        if response.status_code != 200:
            return None
        try:
            props = response.json()
            value = (props.get("default_generation_settings") or {}).get("n_ctx") or props.get("n_ctx")
        except (ValueError, AttributeError):
            return None
        return int(value) if isinstance(value, int) and value > 0 else None

    # -- tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of text by the server's tokenizer when it has one (cached per text), else estimate_tokens."""
        return self._count(text) if text else 0

    def _count_uncached(self, text: str) -> int:
        if self._tokenizer is None:
            probed = self._probe_tokenizer(text)
            if probed is not None:
                return probed
        if self._tokenizer == ESTIMATE:
            return estimate_tokens(text)
        assert self._tokenizer is not None
        tokens = self._tokenize(self._tokenizer, text)
        if tokens is None:
            raise ModelError(f"the model server at {self.url} stopped answering {self._tokenizer}: {START_HINT}")
        return tokens

    def _tokenize(self, endpoint: str, text: str) -> int | None:
        """Token count from one tokenizer endpoint, None when the server does not offer it (404, bad body...)."""
        # One body for every server: llama-cpp-python reads "input", llama-server "content", vLLM "model"+"prompt".
        body = {"input": text, "content": text, "prompt": text, "model": self.model_id}
        response = self._post(endpoint, body, root=True)
        if response.status_code != 200:
            return None
        try:
            tokens = response.json().get("tokens")
        except (ValueError, AttributeError):
            return None
        return len(tokens) if isinstance(tokens, list) else None

    def _probe_tokenizer(self, text: str) -> int | None:
        """Find the tokenizer endpoint the server offers (once); the count of text when one was found."""
        found, count = ESTIMATE, None
        for endpoint in TOKENIZE_ENDPOINTS:
            count = self._tokenize(endpoint, text)
            if count is not None:
                found = endpoint
                break
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = found
                if found == ESTIMATE:
                    logger.info("model server %s offers no tokenizer: token counts are estimated", self.url)
                else:
                    logger.info("model server %s: tokens counted by %s", self.url, found)
        return count

    def count_chat_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens of the message contents plus the template allowance (an upper bound; see the constants above)."""
        tokens = sum(self.count_tokens(m.get("content", "")) for m in messages)
        tokens += TEMPLATE_TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS_PER_REPLY
        if not messages or messages[0].get("role") != "system":
            tokens += DEFAULT_SYSTEM_TOKENS
        return tokens

    # -- errors

    def _overflow(self, message: str) -> QuestionError:
        return QuestionError(
            f"the question does not fit the model server's context ({message}): shorten it, or give the server a "
            "larger context (--n_ctx) and set RAG_LLM__N_CTX to it"
        )

    def _chat_error(self, response: httpx.Response) -> Exception:
        message = _server_message(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 400 and _is_overflow(body, message):
            return self._overflow(message)
        if response.status_code == 404:
            return ModelError(
                f"the model server at {self.url} has no chat endpoint or model {self.model_id!r} ({message}): "
                "check RAG_LLM__URL (it ends in /v1) and RAG_LLM__SERVER_MODEL"
            )
        return self._http_error(response, "the chat request")

    def _stream_error(self, payload: str) -> Exception:
        try:
            body = json.loads(payload)
        except json.JSONDecodeError:
            body = payload
        message = _error_text(body)
        if _is_overflow(body, message):
            return self._overflow(message)
        return ModelError(f"the model server at {self.url} failed while answering: {message}")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
