"""One small generic registry, used for every plug-in kind (algorithms, datasets, engines, ...).

A name maps to an object (usually a class). Three ways to make a name known:

1. in-tree code decorates a class: ``@REGISTRY.register("agro")``;
2. a third-party package declares an entry point in the registry's group, e.g. in its
   ``pyproject.toml``::

       [project.entry-points."rlft.algorithms"]
       my-algo = "my_pkg.algo:MyAlgo"

3. the user passes ``"package.module:Object"`` instead of a name.

Lookups of an unknown name raise :class:`~rlft.errors.UsageError` listing the known names.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from rlft.errors import UsageError

T = TypeVar("T")


def import_object(path: str) -> object:
    """Import ``"package.module:Attr"`` (``Attr`` may be dotted) and return the attribute."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{path!r} is not of the form 'package.module:Name'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r} for {path!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


class Registry(Generic[T]):
    """Name -> object table for one plug-in kind, with entry-point discovery.

    Args:
        kind: what the entries are, for error messages ("algorithm", "dataset", ...).
        entry_point_group: the ``importlib.metadata`` entry-point group scanned on first lookup.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` adds the decorated object under ``name``."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Add ``obj`` under ``name``; re-adding the very same object is a no-op."""
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered to {existing!r}")
        self._entries[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.load()

    def available(self) -> list[str]:
        """Every known name (built-in and entry points), sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The object registered as ``name``, or imported from ``"module:Object"``."""
        if name in self._entries:
            return self._entries[name]
        self._load_entry_points()
        if name in self._entries:
            return self._entries[name]
        if ":" in name:
            return import_object(name)  # type: ignore[return-value]
        known = ", ".join(self.available())
        raise UsageError(f"unknown {self.kind} {name!r}; known: {known} (or 'package.module:Name')")

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries
