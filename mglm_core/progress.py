"""Progress reports from fits, for dashboards and notebooks.

A fit given ``callback=f`` calls ``f(fraction, message)`` as it goes, with ``fraction``
in [0, 1] never decreasing and 1.0 at the end. The fraction is an estimate: each fit maps
its stages onto sub-ranges of [0, 1] and, inside a stage, how far it is:

* Newton stages: the decrement :math:`\\delta` falls from its first value
  :math:`\\delta_0` towards the tolerance (quadratically near the end), so
  :math:`1 - \\log(\\delta/\\mathrm{tol}) / \\log(\\delta_0/\\mathrm{tol})`;
* loops of known length (integration points): the share done.

The callback runs in the fitting thread; it should be quick (the dashboard only hands
the number over to its event loop).
"""
from __future__ import annotations

import math

__all__ = ["Progress"]


class Progress:
    """Monotone progress reporting to an optional ``callback(fraction, message)``."""

    def __init__(self, callback=None):
        self.callback = callback
        self.fraction = 0.0

    def report(self, fraction: float, message: str = "") -> None:
        if self.callback is None:
            return
        self.fraction = max(self.fraction, min(1.0, float(fraction)))
        self.callback(self.fraction, message)

    def done(self, message: str = "done") -> None:
        self.report(1.0, message)

    def stage(self, lo: float, hi: float, label: str, tol: float):
        """A hook ``hook(iteration, size)`` for an iterative stage that ends when ``size`` (a Newton
        decrement, an objective change, a gradient) falls below ``tol``; reports in [lo, hi]."""
        first = []
        tol = max(float(tol), 1e-300)

        def hook(iteration, size):
            s = max(float(size), tol) if math.isfinite(size) else 10 * tol
            if not first:
                first.append(max(s, 10 * tol))
            share = 1.0 - math.log(s / tol) / math.log(first[0] / tol)
            self.report(lo + (hi - lo) * max(0.0, share), f"{label}, iteration {iteration}")

        return hook if self.callback is not None else None
