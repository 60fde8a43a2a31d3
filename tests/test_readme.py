"""The README's "add a method" example really is a complete method."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from strategies.base import REGISTRY
from strategies.core import ArrayData, predict
from strategies.protocol import fit

README = Path(__file__).resolve().parent.parent / "README.md"


def test_add_a_method_example_registers_and_trains():
    text = README.read_text()
    section = text[text.index("## Add a method"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    try:
        assert REGISTRY["center"].label == "Center"
        rng = np.random.default_rng(0)
        y = rng.integers(0, 3, 120)
        x = (rng.normal(size=(120, 8)) + 3 * np.eye(3, 8)[y]).astype(np.float32)
        data = ArrayData(x, y, np.zeros(120, dtype=np.int64), np.arange(120))
        model = fit("center", data, 3, 1, do_search=False).model
        assert (predict(model, x) == y).mean() > 0.8
    finally:
        REGISTRY.pop("center", None)
