"""Registration helpers, in the shape of the SDK's ``register_exact_evm_*``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..assets import AssetScales
from ..keys import Payer
from .client import BatchSettlementTallyScheme as ClientScheme
from .constants import NETWORK_PATTERN
from .server import BatchSettlementTallyScheme as ServerScheme
from .server import PaymentFlow

if TYPE_CHECKING:
    from x402 import x402Client, x402ClientSync, x402ResourceServer, x402ResourceServerSync
    from x402.http import HTTPFacilitatorClient, HTTPFacilitatorClientSync

__all__ = [
    "register_tally_client",
    "register_tally_server",
    "tally_facilitator",
    "tally_facilitator_sync",
]

ClientT = TypeVar("ClientT", "x402Client", "x402ClientSync")
ServerT = TypeVar("ServerT", "x402ResourceServer", "x402ResourceServerSync")


def _patterns(networks: str | list[str] | None) -> list[str]:
    if networks is None:
        return [NETWORK_PATTERN]
    return [networks] if isinstance(networks, str) else list(networks)


def register_tally_client(
    client: ClientT,
    payer: Payer,
    networks: str | list[str] | None = None,
    *,
    assets: AssetScales | Mapping[str, int] | None = None,
    **options: Any,
) -> ClientT:
    """Registers the Tally IOU signer for ``tally:*`` (or the given networks).

    ``options`` go to :class:`tally_x402.batch_settlement.client.BatchSettlementTallyScheme`
    (``validity_seconds``, ``payment_identifier``, ...).
    """
    scheme = ClientScheme(payer, assets=assets, **options)
    for pattern in _patterns(networks):
        client.register(pattern, scheme)
    return client


def register_tally_server(
    server: ServerT,
    networks: str | list[str] | None = None,
    *,
    assets: AssetScales | Mapping[str, int] | None = None,
    default_asset: str = "USD",
    payment_flow: PaymentFlow = "upfront",
    bind_resource: bool = True,
) -> ServerT:
    """Registers Tally's ``batch-settlement`` server scheme for ``tally:*`` (or given networks)."""
    scheme = ServerScheme(
        assets=assets,
        default_asset=default_asset,
        payment_flow=payment_flow,
        bind_resource=bind_resource,
    )
    for pattern in _patterns(networks):
        server.register(pattern, scheme)
    return server


def tally_facilitator(url: str, timeout: float = 30.0) -> HTTPFacilitatorClient:
    """The SDK's async HTTP facilitator client, pointed at ``tally serve --http-addr``."""
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient

    return HTTPFacilitatorClient(FacilitatorConfig(url=url, timeout=timeout))


def tally_facilitator_sync(url: str, timeout: float = 30.0) -> HTTPFacilitatorClientSync:
    """The SDK's sync HTTP facilitator client (for ``x402ResourceServerSync``, Flask)."""
    from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync

    return HTTPFacilitatorClientSync(FacilitatorConfig(url=url, timeout=timeout))
