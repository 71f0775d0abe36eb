# flask-smorest ships no types (no py.typed, no stub package). This stub tells mypy the one thing that
# matters to our views, that `abort` never returns, and leaves everything else Any. `abort` is the one
# flask_smorest re-exports from webargs, which is typed (NoReturn) there.
from typing import Any

from webargs.flaskparser import abort as abort

def __getattr__(name: str) -> Any: ...
