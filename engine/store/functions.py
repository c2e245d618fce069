"""SQL functions every store connection carries (registered on open, never used by the schema).

``fsat_fold(text)`` folds case the Unicode way, for the filters' matching of
non-ASCII tags and names; the schema never calls it, so ``sqlite3`` and other
tools still read the file.
"""

from __future__ import annotations

import sqlite3
import unicodedata

__all__ = ["FOLD_FUNCTION", "fold", "register_functions"]


#: The SQL name of :func:`fold` on the store's connections.
FOLD_FUNCTION = "fsat_fold"


def fold(text: str | None) -> str | None:
    """Text for matching ignoring case: Unicode case folding of its composed form (``ÉTÉ``, ``été`` -> ``été``)."""
    if text is None:
        return None
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", str(text)).casefold())


def register_functions(conn: sqlite3.Connection) -> None:
    """Make :func:`fold` callable as ``fsat_fold(text)`` on ``conn`` (the filters use it for non-ASCII values)."""
    conn.create_function(FOLD_FUNCTION, 1, fold, deterministic=True)
