"""The one line for a split without a column it needs."""

from __future__ import annotations

from typing import Sequence

from framework.core.errors import UserError


def require_column(columns: Sequence[str], column: str, what: str, kind: str = "label",
                   hint: str = "set --label_column") -> None:
    """Refuse (UserError) `what` (e.g. "the training data") whose `columns` lack `column`: the line names the
    column, its `kind` (label, text), the columns there are and the `hint` (the flag that names the column)."""
    if column not in columns:
        where = ", ".join(columns)
        raise UserError(f"{what} has no {kind} column {column!r} (columns: {where}{'; ' + hint if hint else ''})")
