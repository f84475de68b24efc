"""A local, offline research assistant over paper abstracts, with cited passages."""

__version__ = "0.1.0"
