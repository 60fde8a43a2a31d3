"""Shared output of the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, path: Path | None) -> dict:
    """Print ``result`` as JSON and also write it to ``path`` when given; return it."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.write_text(text)
    return result
