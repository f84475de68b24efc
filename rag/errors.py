"""A small tree of domain errors. The CLI turns them into one line and an exit code, the UI into gr.Error."""


class RagError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(RagError):
    """A setting is invalid or points at something that is not there."""

    exit_code = 2


class CorpusError(RagError):
    """A corpus file cannot be read or parsed; the message names the file and line."""

    exit_code = 3


class IndexError_(RagError):
    """The Chroma index is missing, stale, built with another embedder, or unreadable."""

    exit_code = 4


class EmbeddingError(RagError):
    """The embedding model cannot be found or loaded."""

    exit_code = 5


class ModelError(RagError):
    """The GGUF model cannot be found, read or loaded by the installed llama.cpp."""

    exit_code = 6


class PromptError(RagError):
    """A prompt template is missing or was rendered with a missing variable."""

    exit_code = 7


class QuestionError(RagError):
    """The question is empty, or too long to answer within the model's context."""

    exit_code = 8


class BatchInputError(RagError):
    """A batch input file cannot be read at all (a single bad line is recorded, not raised)."""

    exit_code = 9
