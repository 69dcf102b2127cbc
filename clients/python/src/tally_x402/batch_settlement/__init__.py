"""x402 ``batch-settlement`` on Tally, for the official x402 Python SDK.

Like the SDK's own mechanisms (``x402.mechanisms.evm.exact``), one scheme is
a client module and a server module, registered by network pattern
(``tally:*``):

* :class:`TallyClientScheme` (``client.BatchSettlementTallyScheme``) signs a
  Tally IOU for a Tally offer;
* :class:`TallyServerScheme` (``server.BatchSettlementTallyScheme``) prices
  routes in Tally assets and binds each offer to its resource;
* Tally itself is the facilitator: :func:`tally_facilitator` is the SDK's
  ``HTTPFacilitatorClient`` pointed at ``tally serve --http-addr``.
"""

from .client import BatchSettlementTallyScheme as TallyClientScheme
from .constants import FORMAT_TALLY_IOU, NETWORK_PATTERN, NETWORK_PREFIX, SCHEME_BATCH_SETTLEMENT
from .register import (
    register_tally_client,
    register_tally_server,
    tally_facilitator,
    tally_facilitator_sync,
)
from .server import BatchSettlementTallyScheme as TallyServerScheme

__all__ = [
    "FORMAT_TALLY_IOU",
    "NETWORK_PATTERN",
    "NETWORK_PREFIX",
    "SCHEME_BATCH_SETTLEMENT",
    "TallyClientScheme",
    "TallyServerScheme",
    "register_tally_client",
    "register_tally_server",
    "tally_facilitator",
    "tally_facilitator_sync",
]
