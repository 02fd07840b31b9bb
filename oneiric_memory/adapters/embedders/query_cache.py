"""A bounded LRU of query embeddings: the same searches repeat, and a model call costs milliseconds to seconds."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

__all__ = ["QueryCache"]


class QueryCache:
    """LRU keyed by (model, prefix, text); ``capacity`` 0 disables it. Returns copies so callers cannot corrupt it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, list[float]] = OrderedDict()

    def get(self, key: Hashable) -> list[float] | None:
        if self.capacity > 0:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return list(cached)
        self.misses += 1
        return None

    def put(self, key: Hashable, vector: list[float]) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = list(vector)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def stats(self) -> dict[str, object]:
        return {"cache_hit_ratio": round(self.hit_ratio, 4), "cache_hits": self.hits, "cache_misses": self.misses,
                "cache_size": len(self), "cache_capacity": self.capacity}
