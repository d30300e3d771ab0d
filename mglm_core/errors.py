"""Exceptions and warnings raised by mglm.

Every error the library raises on purpose derives from :class:`MglmError`, which is a
``ValueError`` so that code written for statsmodels (which raises ``ValueError``) keeps
working. Messages follow the pattern ``"`<name>` must be <constraint>; got <value>."``
and name the offending column or argument.

Hierarchy::

    ValueError
     └── MglmError
          ├── DataError       bad data: missing/unknown columns, wrong types, empty frames
          ├── FormulaError    bad formula text; carries ``formula`` and ``position``
          └── FitError        a fit could not be carried out
    UserWarning
     ├── ConvergenceWarning   an optimizer stopped before its convergence criterion
     ├── ApproximationWarning a fit converged with another approximation than its usual one
     │                        (fit_laplace integrating a component exactly, a diagonal curvature)
     └── DataWarning          the data were changed (e.g. rows with missing values dropped)
"""

from __future__ import annotations

import re

__all__ = [
    "MglmError",
    "DataError",
    "FormulaError",
    "FitError",
    "ConvergenceWarning",
    "ApproximationWarning",
    "DataWarning",
]


class MglmError(ValueError):
    """Base class of every error raised on purpose by mglm."""


class DataError(MglmError):
    """The data do not fit the model: unknown column, wrong dtype, empty frame, ..."""


class FormulaError(MglmError):
    """A formula could not be parsed or uses something that is not allowed.

    Parameters
    ----------
    message : str
        What is wrong, naming the bad token.
    formula : str, optional
        The formula text. When given, ``str(error)`` shows it with a caret line under
        the bad token.
    position : int, optional
        Index in ``formula`` of the first character of the bad token.
    length : int, optional
        Number of characters to underline (default 1).

    Attributes
    ----------
    message, formula, position, length
        As given.
    """

    def __init__(
        self,
        message: str,
        formula: str | None = None,
        position: int | None = None,
        length: int = 1,
    ):
        # formulaic's own messages (wrapped into this one) carry terminal colour codes
        self.message = re.sub(r"\x1b\[[0-9;]*m", "", message)
        self.formula = formula
        self.position = position
        self.length = max(int(length), 1)
        super().__init__(self._render())

    def _render(self) -> str:
        if self.formula is None or self.position is None:
            return self.message
        pos = min(max(self.position, 0), len(self.formula))
        caret = " " * pos + "^" * self.length
        return f"{self.message}\n    {self.formula}\n    {caret}"

    def __reduce__(self):  # keep the error picklable (worker threads / processes)
        return (type(self), (self.message, self.formula, self.position, self.length))


class FitError(MglmError):
    """A fit could not be carried out (e.g. a non-finite objective at the start)."""


class ConvergenceWarning(UserWarning):
    """An optimizer stopped before meeting its convergence criterion."""


class ApproximationWarning(UserWarning):
    """A fit converged, but with another approximation than its usual one (the message says which
    and why): not a failure, and ``converged`` stays True."""


class DataWarning(UserWarning):
    """The data were changed before fitting (e.g. rows with missing values dropped)."""
