"""Layer math of the stacked steps (`strategies.stacked`): weights held (L, in, out).

A stacked step is a run of batched products (``torch.bmm`` into tensors the step owns)
with one compiled pass between two products (`strategies._stacked_kernels`): the bias
and activation after a forward product, the head gradients, the activation's backward
with the bias gradient. Between two steps, the Adam update streams every run's
parameters and moments through the caches; each kind of operation a step issues then
starts cold (its code and data fetched from memory: 15–50 µs on a 2-core VM). Fewer
kinds and no allocation per step took DANN's stacked step from 1.7 to 1.4 ms at
512-wide features and batch 8 (`BENCHMARKS.md`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from strategies.base import Method
    from strategies.stacked import StackedBatch

#: `strategies._stacked_kernels.back_sum_`'s "no second branch".
NO_EXTRA = np.empty((0, 0, 0), np.float32)


class Scratch:
    """A stacked step's own tensors for one run set and batch size, made on its first step.

    Attributes
    ----------
    buf : dict of str to Tensor
        float32 activations and gradients, by the names the step gives them: (L, B, n)
        for a size ``n``, else (L, *shape) for a tuple ``shape``.
    row, codes : Tensor
        (B,) float32 and int64: `strategies._stacked_kernels.site_rows_`'s outputs.
    """

    def __init__(self, s: dict[str, Tensor], rows: int, sizes: dict[str, int | tuple[int, ...]]) -> None:
        runs = next(iter(s.values())).shape[0]
        self.s = s
        self.buf = {k: torch.empty(runs, *(n if isinstance(n, tuple) else (rows, n)))
                    for k, n in sizes.items()}
        self.row, self.codes = torch.empty(rows), torch.empty(rows, dtype=torch.int64)
        self._views: dict[tuple[str, int], Tensor] = {}
        self._x: tuple[Tensor, Tensor, Tensor] | None = None

    def __getitem__(self, name: str) -> Tensor:
        return self.buf[name]

    def t(self, name: str) -> Tensor:
        """Buffer or state weight ``name`` transposed (a view, made once)."""
        key = (name, 0)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = (self.buf[name] if name in self.buf else self.s[name]).transpose(1, 2)
        return view

    def shared(self, x: Tensor, transposed: bool = False) -> Tensor:
        """The batch ``x`` (B, d) broadcast to every run, (L, B, d) or (L, d, B) when ``transposed``.

        Views, made again only when ``x`` is another tensor.
        """
        if self._x is None or self._x[0] is not x:
            wide = x.expand(next(iter(self.s.values())).shape[0], *x.shape)
            self._x = (x, wide, wide.transpose(1, 2))
        return self._x[2 if transposed else 1]


def scratch(model: Method, s: dict[str, Tensor], batch: StackedBatch, sizes: dict[str, int | tuple[int, ...]]
            ) -> Scratch:
    """``model``'s `Scratch` for the state ``s`` and ``batch``'s number of rows, cached on the model."""
    cache = model.__dict__.setdefault("_stacked_scratch", {})
    key = (id(s), batch.x.shape[0])
    found = cache.get(key)
    if found is None or found.s is not s:
        found = cache[key] = Scratch(s, batch.x.shape[0], sizes)
    return found


def product(w: Scratch, layer: str, inp: Tensor, out: str) -> Tensor:
    """``inp @ W`` for every run into buffer ``out`` (no bias yet); returns it."""
    return torch.bmm(inp, w.s[f"{layer}.weight"], out=w[out])


def linear_(w: Scratch, layer: str, inp: Tensor, out: str, relu: bool) -> Tensor:
    """``inp @ W + b`` for every run into buffer ``out``, then ReLU when ``relu``; returns it."""
    from strategies._stacked_kernels import bias_act_

    h = product(w, layer, inp, out)
    bias_act_(h.numpy(), w.s[f"{layer}.bias"].numpy(), relu)
    return h


def back_(w: Scratch, layer: str, d_out: Tensor, out: str) -> Tensor:
    """dL/d(input) of a layer, ``d_out @ W^T``, into buffer ``out``; returns it."""
    return torch.bmm(d_out, w.t(f"{layer}.weight"), out=w[out])


def weight_grads(w: Scratch, g: dict[str, Tensor], pairs: tuple[tuple[str, str, Tensor], ...],
                 x: Tensor | None = None) -> None:
    """Each (layer, its input, dL/d(output)) triple's weight gradient into ``g``.

    The input is a buffer's name, or ``"x"`` for the batch ``x`` shared by the runs.
    """
    for layer, inp, d_out in pairs:
        inp_t = w.t(inp) if inp != "x" or x is None else w.shared(x, transposed=True)
        torch.bmm(inp_t, d_out, out=g[f"{layer}.weight"])
