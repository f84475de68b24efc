"""Prompt templates: plain files in prompts/, listed with their variables in prompts/prompts.toml, rendered strictly.

A template writes its placeholders as {{name}}. Rendering with a missing or an unexpected variable raises
PromptError, and so does a template whose placeholders differ from the variables its sidecar declares.
Values are substituted in one pass, so a value that itself contains {{...}} is never expanded.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rag.errors import PromptError

logger = logging.getLogger(__name__)

#: The one answer given when the corpus has nothing on the question; shared by the prompt, the code and the tests.
NOT_IN_CORPUS = "The corpus does not contain an answer to this question."

MANIFEST = "prompts.toml"
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Tags that delimit data in our prompts, and chat-template control syntax (<|im_start|>, [INST], <s>...).
_DATA_TAG = re.compile(r"<\s*/?\s*passages?\b[^>]*>", re.IGNORECASE)
_CONTROL = re.compile(r"<\|[^|>]{0,40}\|>|\[/?INST\]|<<\s*/?SYS\s*>>|</?s>", re.IGNORECASE)


def neutralise(text: str) -> str:
    """Make untrusted text (an abstract, a question) unable to close our data tags or forge chat-template turns."""
    text = _DATA_TAG.sub(lambda m: m.group(0).replace("<", "(").replace(">", ")"), text)
    return _CONTROL.sub(lambda m: m.group(0).replace("<", "(").replace(">", ")").replace("[", "(").replace("]", ")"), text)


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str
    variables: frozenset[str]
    path: Path

    def render(self, **values: object) -> str:
        given = set(values)
        missing = sorted(self.variables - given)
        extra = sorted(given - self.variables)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise PromptError(f"prompt {self.name!r} ({self.path}): {'; '.join(parts)}")
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), self.text)


class Prompts:
    """All templates of a prompts folder, checked against its manifest when loaded."""

    def __init__(self, templates: dict[str, PromptTemplate], version: str, folder: Path):
        self.templates = templates
        self.version = version
        self.folder = folder

    @classmethod
    def load(cls, folder: Path) -> Prompts:
        manifest_path = folder / MANIFEST
        try:
            manifest = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise PromptError(f"prompt manifest not found: {manifest_path} (set prompts_dir to a folder with {MANIFEST})") from e
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise PromptError(f"cannot read prompt manifest {manifest_path}: {e}") from e
        version = manifest.get("prompt_version")
        entries = manifest.get("templates")
        if not isinstance(version, str) or not version or not isinstance(entries, dict):
            raise PromptError(f"{manifest_path} needs a prompt_version string and a [templates.NAME] table per template")
        templates: dict[str, PromptTemplate] = {}
        for name, entry in entries.items():
            path = folder / f"{name}.txt"
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as e:
                raise PromptError(f"prompt template {name!r} not found or unreadable: {path} ({e})") from e
            declared = frozenset(entry.get("variables", []))
            used = frozenset(_PLACEHOLDER.findall(text))
            if declared != used:
                raise PromptError(
                    f"prompt {name!r} ({path}) uses {{{{{', '.join(sorted(used))}}}}} but {manifest_path} declares "
                    f"{sorted(declared)}: make them agree"
                )
            templates[name] = PromptTemplate(name=name, text=text, variables=declared, path=path)
        logger.debug("loaded %d prompt templates (version %s) from %s", len(templates), version, folder)
        return cls(templates, version, folder)

    def get(self, name: str) -> PromptTemplate:
        try:
            return self.templates[name]
        except KeyError as e:
            raise PromptError(f"no prompt template {name!r} in {self.folder} (have: {', '.join(sorted(self.templates))})") from e

    def render(self, name: str, **values: object) -> str:
        return self.get(name).render(**values)
