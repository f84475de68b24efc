"""Start the web app: `python app.py` (or `rag serve`). Settings come from RAG_* environment variables."""

import logging

from rag.config import Settings
from rag.ui import serve

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(Settings())
