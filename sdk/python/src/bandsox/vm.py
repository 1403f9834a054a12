"""BandSox-compatible module path: ``from bandsox.vm import MicroVM``."""

from ._async.client import AsyncMicroVM
from ._sync.client import MicroVM

#: BandSox's class of VMs a local manager returns (the same object here).
ManagedMicroVM = MicroVM

__all__ = ["MicroVM", "AsyncMicroVM", "ManagedMicroVM"]
