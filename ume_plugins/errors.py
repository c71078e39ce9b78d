"""The one exception bad input raises."""

from __future__ import annotations


class UMEInputError(ValueError):
    """An input could not be turned into model inputs.

    Deliberately not a ``TypeError``: sentence-transformers retries ``preprocess`` without the
    prompt on ``TypeError``, which would hide the real problem.

    Attributes:
        index: Position of the offending input in the list the caller passed, when known.
        reason: What was wrong with it.
    """

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.index = index
        self.reason = reason
        where = f"Input {index}" if index is not None else "Input"
        super().__init__(f"{where}: {reason}")

    def at(self, index: int) -> UMEInputError:
        """The same error, located at ``index``."""
        return UMEInputError(self.reason, index=index)
