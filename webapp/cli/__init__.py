"""The `swapline` command: a light client of the REST API (no Flask, Celery, FAISS, numpy or torch),
built on the Python client in `webapp.client`.

| module | what lives there |
| --- | --- |
| `commands` | the click commands (`main` is the console script) |
| `follow` | submitting batches and following jobs to their end |
| `batching` | reading files into documents and batches under the API's limits |
| `progress` | the progress bar (redraws on a terminal, plain lines in a log) |
| `render` | text output of each command |
"""

from webapp.cli.commands import main

__all__ = ["main"]
