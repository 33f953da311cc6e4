"""The error vocabulary shared by every stage.

Stage logic raises these; the CLI turns them into one line and an exit code, and the gRPC
interceptor (transport layer) turns them into status codes. Anything else is a bug.
"""


class MvgenError(Exception):
    """Base of every error that carries a message meant for a person."""


class InvalidInputError(MvgenError):
    """The caller's input cannot be used (not audio, too long, bad parameter). Maps to INVALID_ARGUMENT."""


class ResourceExhaustedError(MvgenError):
    """Busy or out of memory; another replica or a later try may succeed. Maps to RESOURCE_EXHAUSTED."""


class TransientError(MvgenError):
    """A dependency (store, tool, peer) failed in a way that a retry may fix. Maps to UNAVAILABLE."""


class JobCancelledError(MvgenError):
    """The job was cancelled while this work was in progress. Maps to CANCELLED."""


class StageFailedError(MvgenError):
    """A stage could not produce a valid output (e.g. an external tool failed). Maps to INTERNAL."""
