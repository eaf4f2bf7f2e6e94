"""Classes built on first use, for the modules whose classes subclass an optional library's
(TensorFlow, Keras, transformers, Lightning): importing those modules then costs nothing and works
without the library; the first use of a name imports it, or says which extra to install.
"""

from __future__ import annotations

import importlib
from typing import Callable

from colab_magics.errors import MissingDependency


def lazy_classes(module: str, namespace: dict, builders: dict[str, Callable[[], type]]):
    """A module `__getattr__` that builds each of `builders`' names once, on first lookup."""

    def __getattr__(name: str):
        if name not in builders:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        cls = builders[name]()
        namespace[name] = cls  # built once; later lookups do not come back here
        return cls

    return __getattr__


def require(module: str, package: str, extra: str):
    """`import module`, or MissingDependency naming `pip install "colab-magics[extra]"`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(package, extra) from None
