"""Performance measurements that print ratios measured side by side in one run."""
from __future__ import annotations

import json


def emit(result, path: str | None, indent: int = 1, show: bool = True):
    """A benchmark's figures as JSON: printed (unless ``show`` is False) and,
    when ``path`` is given (``--json``), written to that file; returns them."""
    text = json.dumps(result, indent=indent)
    if show:
        print(text)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    return result
