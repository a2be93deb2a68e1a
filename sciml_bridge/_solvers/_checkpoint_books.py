"""The per-member host records a checkpoint keeps next to the solver state ("books").

`_run._Driver` keeps, per member, its steps, result code, whether it is done or was stopped by
the callback, its loss history and its failure message. They are written as plain arrays
(files hold arrays, never pickles) and, since a file is untrusted input, each is checked
(presence, shape, dtype, range, agreement with the others and with the number of members)
before the driver uses any.
"""

from typing import Any

import numpy as np

from .._result import result_at


# The per-member host records `_run._Driver` keeps: name -> the dtype kinds allowed.
_BOOKS = {"steps": "iu", "results": "iu", "lengths": "iu", "done": "b", "by_callback": "b"}


def _book(arrays: dict, name: str, kinds: str, shape: tuple) -> np.ndarray:
    key = f"book_{name}"
    if key not in arrays:
        raise ValueError(f"no `{key}`")
    book = arrays[key]
    if book.shape != shape or book.dtype.kind not in kinds:
        raise ValueError(f"`{key}` of shape {book.shape} and dtype {book.dtype}, where "
                         f"shape {shape} and dtype kind {kinds!r} belong")  # fmt: skip
    return book


def _is_result(code: int) -> bool:
    try:
        result_at(code)
    except KeyError:
        return False
    return True


def read_books(arrays: dict, members: int) -> dict:
    """The books, each checked (presence, shape, dtype, range, agreement with the others and
    with the number of members) before the driver uses any: only checked books come back."""
    books: dict[str, Any] = {k: _book(arrays, k, kinds, (members,)) for k, kinds in _BOOKS.items()}
    steps, lengths = ([int(x) for x in books[k]] for k in ("steps", "lengths"))
    if any(s < 0 or not 0 <= n <= s + 1 for s, n in zip(steps, lengths)):
        raise ValueError(f"`book_steps` {steps} and `book_lengths` {lengths} disagree: a "
                         "member's history holds at most one loss per step and its start")
    bad = [int(c) for c in books["results"] if int(c) != -1 and not _is_result(int(c))]
    if bad:  # -1 is "no result yet"
        raise ValueError(f"`book_results` holds {bad[0]}, which is no `sb.RESULTS` code")
    books["history"] = _book(arrays, "history", "f", (sum(lengths),))
    books["details"] = _details(arrays, members)
    return books


_SEPARATOR = "\x1f"  # ASCII unit separator: between the members' failure messages


def encode_details(details: list[str]) -> np.ndarray:
    """The members' failure messages as one uint8 array (files hold arrays, never pickles)."""
    return np.frombuffer(_SEPARATOR.join(details).encode(), dtype=np.uint8).copy()


def _details(arrays: dict, members: int) -> list[str]:
    # Optional: checkpoints written before messages were kept have none.
    if "book_details" not in arrays:
        return [""] * members
    book = arrays["book_details"]
    if book.ndim != 1 or book.dtype != np.uint8:
        raise ValueError(f"`book_details` of shape {book.shape} and dtype {book.dtype}, where "
                         "a 1-D uint8 array belongs")  # fmt: skip
    try:
        details = book.tobytes().decode().split(_SEPARATOR)
    except UnicodeDecodeError as e:
        raise ValueError(f"`book_details` is not UTF-8 text ({e})") from e
    if len(details) != members:
        raise ValueError(f"`book_details` holds {len(details)} messages for {members} members")
    return details
