"""Choosing the fast path for `sb.flat`. (Recognition of known networks lands with FlatMLP.)"""

from typing import Any

from ._destructure import Restructure


def fast_path(model: Any, theta0, re: Restructure, fast):
    """A fast FlatModel with `theta0`'s layout for `model`, or None under `fast="auto"`."""
    if fast is True:
        raise TypeError(
            f"`sb.flat(..., fast=True)` has no fast path for a {type(model).__name__}. "
            "Fix: use `fast=\"auto\"` or `fast=False` for the general path."
        )
    return None
