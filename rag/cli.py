"""Command line: ingest / search / status / ask / batch / serve / eval.

Library errors (RagError) become one line on stderr and the error's exit code; nothing here holds
pipeline logic: every command calls the same code as the web app.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from rag.config import Settings
from rag.errors import RagError


def _settings(ctx: click.Context, **overrides) -> Settings:
    base = dict(ctx.obj or {})
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**base)


def _fail_cleanly(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RagError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), help="Index location (env RAG_DATA_DIR).")
@click.option("--chroma-url", help="Use the Chroma server at this URL, e.g. http://127.0.0.1:8000 (env RAG_STORE__URL).")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.version_option(package_name="rag-abstracts")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, chroma_url: str | None, verbose: int) -> None:
    """Answer questions about a corpus of paper abstracts, offline, with cited passages."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("chromadb", "httpx", "urllib3", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING) if verbose < 2 else logging.DEBUG)
    ctx.obj = {"data_dir": data_dir} if data_dir else {}
    if chroma_url:
        ctx.obj["store"] = {**Settings().store.model_dump(), "url": chroma_url}


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rebuild", is_flag=True, help="Drop the index and build it again from scratch.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout.")
@click.pass_context
@_fail_cleanly
def ingest(ctx: click.Context, paths: tuple[Path, ...], rebuild: bool, as_json: bool) -> None:
    """Parse, chunk, embed and index corpus files (default: the bundled corpus). Only changes are embedded."""
    from rag.ingest import ingest as run_ingest

    summary = run_ingest(_settings(ctx), list(paths) or None, rebuild=rebuild, progress=True)
    if as_json:
        click.echo(summary.model_dump_json())
    else:
        click.echo(
            f"{summary.records} records, {summary.duplicates} duplicates merged, {summary.papers} papers; "
            f"chunks: {summary.chunks_added} added, {summary.chunks_updated} updated, {summary.chunks_unchanged} unchanged, "
            f"{summary.chunks_removed} removed; {summary.seconds:.2f}s"
        )


@cli.command()
@click.argument("query")
@click.option("-k", "--k", "k", type=click.IntRange(1, 50), help="Number of passages.")
@click.option("--json", "as_json", is_flag=True, help="Print the passages as a JSON list.")
@click.pass_context
@_fail_cleanly
def search(ctx: click.Context, query: str, k: int | None, as_json: bool) -> None:
    """Hybrid (BM25 + dense) search: ranked passages with file:line."""
    from rag.retrieval import Retriever

    passages = Retriever(_settings(ctx)).search(query, k)
    if as_json:
        click.echo(json.dumps([p.model_dump(exclude={"chunk_text"}) for p in passages], ensure_ascii=False))
        return
    for p in passages:
        click.echo(f"{p.rank}. [{p.score:.4f}] {p.label}  ({p.source}:{p.line}, paper {p.paper_id})")
        click.echo(f"   {p.chunk_text[:300]}{'…' if len(p.chunk_text) > 300 else ''}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
@_fail_cleanly
def status(ctx: click.Context, as_json: bool) -> None:
    """What the index holds: papers, chunks, embedder, last ingest."""
    from rag.index import index_status

    s = index_status(_settings(ctx))
    if as_json:
        click.echo(s.model_dump_json())
    else:
        click.echo(
            f"{s.papers} papers, {s.chunks} chunks; embedder {s.embedder}; chunking {s.chunking}; "
            f"fingerprint {s.fingerprint}; last ingest {s.last_ingest}; {s.location}"
        )


def _checked_model_settings(ctx: click.Context, model: str | None, llm_url: str | None = None) -> Settings:
    """Settings whose model can be used, checked before any question, not on each one: the GGUF file exists and is
    a GGUF; or, with a model server (--llm-url / RAG_LLM__URL), the server answers GET /models (and --model then
    names the server's model)."""
    settings = _settings(ctx, **({"llm": {"url": llm_url}} if llm_url else {}))
    if settings.llm.url:
        from rag.llm_remote import RemoteLLM

        if model:
            settings = _settings(ctx, llm={"url": settings.llm.url, "server_model": model})
        remote = RemoteLLM(settings)
        try:
            remote.check()
        finally:
            remote.close()
        return settings
    from rag.model_files import check_gguf, resolve_model_path

    settings = _settings(ctx, model=model)
    check_gguf(resolve_model_path(settings.model, settings.models_dir))
    return settings


def _print_sources(answer) -> None:
    if answer.abstained:
        click.echo("\nNearest passages (not enough to answer):")
        for p in answer.passages[:3]:
            click.echo(f"  - {p.label} ({p.source}:{p.line}, similarity {p.similarity:.2f})")
        return
    if answer.citations:
        click.echo("\nSources:")
    for c in answer.citations:
        title = c.title or "(untitled)"
        click.echo(f"  [{c.n}] {title} — {c.source}:{c.line}")
        click.echo(f"      \"{c.quote}\"")
    if answer.unsupported:
        click.echo("\nNot supported by any passage (shown uncited):")
        for sentence in answer.unsupported:
            click.echo(f"  ! {sentence}")


@cli.command()
@click.argument("question")
@click.option("-k", "--k", "k", type=click.IntRange(1, 50), help="Number of passages retrieved.")
@click.option(
    "--model", "model", help="GGUF file: a path or a file name in models/ (env RAG_MODEL); with --llm-url, the server's model."
)
@click.option("--llm-url", "llm_url", help="An OpenAI-compatible model server, e.g. http://127.0.0.1:8080/v1 (env RAG_LLM__URL).")
@click.option("--json", "as_json", is_flag=True, help="Print the Answer object as JSON (no streaming).")
@click.pass_context
@_fail_cleanly
def ask(ctx: click.Context, question: str, k: int | None, model: str | None, llm_url: str | None, as_json: bool) -> None:
    """Answer a question from the corpus, streaming, then list the cited sources with file:line."""
    from rag.answer import Assistant

    assistant = Assistant(_checked_model_settings(ctx, model, llm_url))
    if as_json:
        click.echo(assistant.ask(question, k=k).model_dump_json(indent=2))
        assistant.save_caches()
        return
    streamed, final = [], None
    for event in assistant.stream(question, k=k):
        if event.kind == "token":
            streamed.append(event.text)
            click.echo(event.text, nl=False)
        elif event.kind == "done":
            final = event.answer
    assistant.save_caches()  # the next question about these papers skips embedding their sentences
    if final is None:
        raise click.ClickException("the answer stream ended without an answer")
    if final.abstained:
        click.echo(final.answer, nl=False)
    elif final.answer.strip() != "".join(streamed).strip():
        # Citation checking changed the text (invented markers removed, markers added): show the checked one.
        click.echo("\n\nChecked answer:\n" + final.answer, nl=False)
    click.echo()
    _print_sources(final)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path), help="Answers, one JSON a line.")
@click.option("-k", "--k", "k", type=click.IntRange(1, 50), help="Number of passages retrieved.")
@click.option(
    "--model", "model", help="GGUF file: a path or a file name in models/ (env RAG_MODEL); with --llm-url, the server's model."
)
@click.option("--llm-url", "llm_url", help="An OpenAI-compatible model server, e.g. http://127.0.0.1:8080/v1 (env RAG_LLM__URL).")
@click.pass_context
@_fail_cleanly
def batch(
    ctx: click.Context, input_path: Path, output: Path, k: int | None, model: str | None, llm_url: str | None
) -> None:
    """Answer every question of INPUT (.jsonl {"id","question"}, .txt, .csv id,question) into OUTPUT.jsonl.

    Resumable: ids already in OUTPUT are skipped. A malformed line gives an error record, not a stop.
    One question per line in every format (a CSV question cannot span lines).
    """
    from rag.answer import Assistant
    from rag.batch import check_paths, read_items, run_batch

    # Wrong paths (OUTPUT a folder, or the input itself) and an input without questions fail before the model loads.
    check_paths(input_path, output)
    read_items(input_path)
    settings = _checked_model_settings(ctx, model, llm_url)
    from rag.index import open_index

    open_index(settings)  # no index (or an unfinished one) stops here; a store lost mid-run is an error record per question
    assistant = Assistant(settings)
    try:
        counts = run_batch(functools.partial(assistant.ask, k=k), input_path, output)
    finally:
        assistant.save_caches()
    click.echo(
        f"{counts['answered']} answered, {counts['errors']} errors, {counts['skipped']} already done "
        f"(of {counts['total']}) -> {output}",
        err=True,
    )


@cli.command()
@click.option("--host", help="Interface to listen on (default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default 7860).")
@click.option("--share", is_flag=True, help="Ask Gradio for a public share link (off unless asked for).")
@click.option("--llm-url", "llm_url", help="An OpenAI-compatible model server, e.g. http://127.0.0.1:8080/v1 (env RAG_LLM__URL).")
@click.pass_context
@_fail_cleanly
def serve(ctx: click.Context, host: str | None, port: int | None, share: bool, llm_url: str | None) -> None:
    """Start the chat in the browser."""
    from rag.ui import serve as run_server

    settings = _settings(ctx, **({"llm": {"url": llm_url}} if llm_url else {}))
    if settings.llm.url:
        settings = _checked_model_settings(ctx, None, settings.llm.url)  # a server that does not answer: fail now
    run_server(settings, host=host, port=port, share=share, announce=functools.partial(click.echo, err=True))


def _register_eval() -> None:
    from rag.eval import eval_command  # light: click and pydantic only at import

    cli.add_command(eval_command, "eval")


_register_eval()


def main() -> None:
    cli(prog_name="rag")
