"""The test process runs stage logic itself (librosa's numba kernels): like every mvgen process that
compiles them, it leases a numba cache of its own first (services/common/numba_cache.py), so that it
never writes a cache another process writes at the same time. Imported before any test module."""

from services.common.numba_cache import lease_numba_cache

lease_numba_cache("pytest")
