"""The load/ready lifecycle every backend follows (cog's model: load once, then serve many calls).

The transport layer reports health from `state`: NOT_SERVING until READY.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

from services.common.errors import InvalidInputError
from services.common.untrusted import quoted


class BackendState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Backend(ABC):  # noqa: B024 (the kinds declare the abstract methods: ClipGenerator, ScriptWriter, ...)
    """A stage backend: `load()` once (weights, tables, label embeddings), then call it many times."""

    name: str = "backend"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """`environ`: the settings it reads (envs.py) when it loads; None: this process's environment."""
        self.environ = environ
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

    def _load(self) -> None:  # noqa: B027 (a hook: doing nothing is the right default)
        """Override to load weights or tables; CPU backends often have nothing to load."""

    @property
    def ready(self) -> bool:
        return self.state is BackendState.READY


B = TypeVar("B", bound=Backend)


def _pick(kind: str, name: str, registry: Mapping[str, Callable[..., B]]) -> Callable[..., B]:
    if name not in registry:
        raise InvalidInputError(f"unknown {kind} backend {quoted(name)}; "
                                f"choose one of: {', '.join(sorted(registry))}")
    return registry[name]


def _build(factory: Callable[..., B], environ: Mapping[str, str] | None) -> B:
    return factory() if environ is None else factory(environ=environ)


class BackendSet(Generic[B]):
    """The backends one stage serves: built from its registry by name, loaded together, chosen per request.

    A deployment enables a few (MVGEN_BACKENDS); a request naming another is refused with the list.
    `environ`: the settings the backends read, given to each (None: this process's environment)."""

    def __init__(self, kind: str, registry: Mapping[str, Callable[..., B]], enabled: Sequence[str],
                 environ: Mapping[str, str] | None = None):
        self.kind = kind
        self.backends: dict[str, B] = {name: _build(_pick(kind, name, registry), environ) for name in enabled}

    def load(self) -> None:
        for backend in self.backends.values():
            backend.load()

    @property
    def ready(self) -> bool:
        return all(backend.ready for backend in self.backends.values())

    def get(self, name: str) -> B:
        backend = self.backends.get(name)
        if backend is None:
            raise InvalidInputError(f"{self.kind} backend {quoted(name)} is not enabled here; "
                                    f"choose one of: {', '.join(sorted(self.backends)) or 'none'}")
        backend.load()  # no-op once loaded; a stage used without load() still works
        return backend
