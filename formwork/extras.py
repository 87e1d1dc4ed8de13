"""Optional extras: whether their packages are installed, asked without importing them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable


def missing(packages: Iterable[str]) -> list[str]:
    """The packages of ``packages`` that cannot be imported here."""
    absent = []
    for name in packages:
        if name in sys.modules:
            if sys.modules[name] is None:  # an import of it is known to fail
                absent.append(name)
        elif importlib.util.find_spec(name) is None:
            absent.append(name)
    return absent
