"""BandSox-compatible module path: ``from bandsox.vm import MicroVM``."""

from ._async.client import AsyncMicroVM
from ._sync.client import MicroVM

__all__ = ["MicroVM", "AsyncMicroVM"]
