"""BandSox-compatible entry point: ``from bandsox.core import BandSox``."""

from ._async.client import AsyncBandSox, AsyncMicroVM
from ._sync.client import BandSox, MicroVM

RemoteBandSox = BandSox
RemoteMicroVM = MicroVM
#: BandSox's class of VMs a local manager returns (the same object here).
ManagedMicroVM = MicroVM

__all__ = [
    "BandSox", "MicroVM", "AsyncBandSox", "AsyncMicroVM", "RemoteBandSox", "RemoteMicroVM",
    "ManagedMicroVM",
]
