"""The gateway's own errors, beside the shared vocabulary (services/common/errors.py), and their status codes."""

from __future__ import annotations

import grpc

from services.common.errors import MvgenError


class NotFoundError(MvgenError):
    """No such job or song for this client. Maps to NOT_FOUND."""


class AlreadyExistsError(MvgenError):
    """A request id reused with another song or options. Maps to ALREADY_EXISTS."""


class PreconditionError(MvgenError):
    """The call cannot work in the current state (e.g. nothing uploaded yet). Maps to FAILED_PRECONDITION."""


STATUS_BY_GATEWAY_ERROR = ((NotFoundError, grpc.StatusCode.NOT_FOUND),
                           (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
                           (PreconditionError, grpc.StatusCode.FAILED_PRECONDITION))
