"""The load/ready lifecycle every backend follows (cog's model: load once, then serve many calls).

The transport layer reports health from `state`: NOT_SERVING until READY.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod


class BackendState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Backend(ABC):
    """A stage backend: `load()` once (weights, tables, label embeddings), then call it many times."""

    name: str = "backend"

    def __init__(self) -> None:
        self.state = BackendState.UNLOADED
        self.load_error: str | None = None
        self._load_lock = threading.Lock()

    def load(self) -> None:
        with self._load_lock:
            if self.state is BackendState.READY:
                return
            self.state = BackendState.LOADING
            try:
                self._load()
            except Exception as exc:
                self.state = BackendState.FAILED
                self.load_error = str(exc)
                raise
            self.state = BackendState.READY

    def _load(self) -> None:
        """Override to load weights or tables; CPU backends often have nothing to load."""

    @property
    def ready(self) -> bool:
        return self.state is BackendState.READY


def pick_backend(kind: str, name: str, registry: dict[str, type[Backend]]) -> type[Backend]:
    from services.common.errors import InvalidInputError

    if name not in registry:
        choices = ", ".join(sorted(registry))
        raise InvalidInputError(f"unknown {kind} backend {name!r}; choose one of: {choices}")
    return registry[name]


