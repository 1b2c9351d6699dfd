"""The one mechanism behind the extension points (encoders, decoders, methods): name -> entry, with the
errors for a name registered twice and for an unknown name (which lists the registered ones)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # "encoder", "decoder", "method": how the errors name an entry

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self[name] = entry
        return entry

    def entry(self, name: str) -> T:
        if name not in self:
            raise ValueError(f"unknown {self.kind} '{name}'; choose one of {', '.join(sorted(self))}")
        return self[name]
