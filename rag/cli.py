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
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.version_option(package_name="rag-abstracts")
@click.pass_context
def cli(ctx: click.Context, data_dir: Path | None, verbose: int) -> None:
    """Answer questions about a corpus of paper abstracts, offline, with cited passages."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"data_dir": data_dir} if data_dir else {}


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

    if not query.strip():
        raise click.UsageError("the query is empty")
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
            f"fingerprint {s.fingerprint}; last ingest {s.last_ingest}"
        )


def main() -> None:
    cli(prog_name="rag")
