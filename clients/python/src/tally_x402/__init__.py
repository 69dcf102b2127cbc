"""Tally for Python: x402 ``batch-settlement`` on Tally, and high-volume IOU streaming.

* :mod:`tally_x402.batch_settlement`: the client and server scheme plugins for
  the official x402 SDK (network pattern ``tally:*``).
* :class:`tally_x402.streaming.Streamer`: signed IOUs over gRPC ``Ingest``.
* :class:`Payer`, :class:`Iou`, :class:`SignedIou`: the ``tally-iou-v1`` format
  (docs/iou-format.md), signed with Ed25519.
"""

from .assets import AssetScales, to_smallest_units
from .batch import SignedBatch
from .iou import (
    FORMAT,
    Iou,
    IouFieldError,
    SignedIou,
    commitment_id,
    parse_commitment_id,
    payment_id_nonce,
)
from .keys import Payer

__version__ = "0.1.0"

__all__ = [
    "FORMAT",
    "AssetScales",
    "Iou",
    "IouFieldError",
    "Payer",
    "SignedBatch",
    "SignedIou",
    "__version__",
    "commitment_id",
    "parse_commitment_id",
    "payment_id_nonce",
    "to_smallest_units",
]
