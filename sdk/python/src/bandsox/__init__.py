"""Python client for bandsox, the microVM sandbox server (BandSox-compatible API).

>>> from bandsox import BandSox          # or: from bandsox.core import BandSox
>>> bs = BandSox()                       # $BANDSOX_URL or http://127.0.0.1:8000
"""

from ._async.client import AsyncBandSox, AsyncCommand, AsyncMicroVM
from ._sync.client import BandSox, Command, MicroVM
from ._types import ExecResult, HttpResponse, SessionId, VmPage
from .errors import (
    AgentUnavailableError,
    AuthenticationError,
    BandSoxError,
    BandSoxTimeoutError,
    ConflictError,
    ImageNotFoundError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    ServerUnavailableError,
    SnapshotNotFoundError,
    TimeoutError,
    UnsupportedError,
    VmNotFoundError,
)

__version__ = "0.1.0"

# BandSox's remote client class names.
RemoteBandSox = BandSox
RemoteMicroVM = MicroVM

__all__ = [
    "BandSox",
    "MicroVM",
    "AsyncBandSox",
    "AsyncMicroVM",
    "Command",
    "AsyncCommand",
    "SessionId",
    "RemoteBandSox",
    "RemoteMicroVM",
    "ExecResult",
    "HttpResponse",
    "VmPage",
    "BandSoxError",
    "NotFoundError",
    "VmNotFoundError",
    "ImageNotFoundError",
    "SnapshotNotFoundError",
    "ConflictError",
    "AuthenticationError",
    "InvalidInputError",
    "TimeoutError",
    "BandSoxTimeoutError",
    "ServerUnavailableError",
    "AgentUnavailableError",
    "RateLimitedError",
    "UnsupportedError",
    "__version__",
]
