"""Resource-server side of x402 ``batch-settlement`` on Tally.

Register it with the SDK's ``x402ResourceServer`` for ``tally:*``
(:func:`tally_x402.batch_settlement.register_tally_server`), with Tally's
facilitator (``tally serve --http-addr``) as the SDK's HTTP facilitator
client. It turns route prices into smallest units of a Tally asset, and names
the request URL as ``extra.resource`` in every Tally offer, so that the
facilitator only accepts an IOU signed for the page being bought
(docs/x402-binding.md, section 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Literal

from x402.interfaces import PaymentFlowConfig, SchemePaymentRequiredContext
from x402.schemas import AssetAmount, Network, PaymentRequirements, Price, SupportedKind

from ..assets import AssetScales, parse_money, to_smallest_units
from ..iou import IouFieldError, check_asset, check_payee, parse_amount
from .constants import FORMAT_TALLY_IOU, NETWORK_PREFIX, SCHEME_BATCH_SETTLEMENT

__all__ = ["BatchSettlementTallyScheme", "MoneyParser", "PaymentFlow"]

logger = logging.getLogger(__name__)

PaymentFlow = Literal["upfront", "authorization"]
MoneyParser = Callable[[str, str], AssetAmount | None]
"""``(decimal amount, network) -> AssetAmount | None``: the SDK's money-parser shape."""

SDK_NO_TRANSFER_METHOD = "default"
"""The SDK's name for "this scheme has no asset transfer method on the wire"."""


class BatchSettlementTallyScheme:
    """Prices and offers for Tally's ``batch-settlement`` (SDK ``SchemeNetworkServer``).

    * ``parse_price``: ``"$0.001"`` -> ``1000`` smallest units of the default
      asset (``USD`` at scale 6 unless configured); ``"0.5 EUR"`` -> EUR at its
      scale; an ``int`` is whole display units; an ``AssetAmount`` is used as
      is. Exact: a price finer than the asset's scale is refused, and floats
      are refused (write prices as strings).
    * ``payment_flow``: ``"upfront"`` (default) settles with Tally before the
      handler runs and serves only after the IOU is durable, like Tally's own
      ``PaywallLayer`` at a fixed price. ``"authorization"`` verifies first,
      runs the handler, then settles, so a handler may charge less than the
      offer through the SDK's settlement overrides (Tally's dynamic pricing).
    * ``bind_resource``: name the request URL (the 402's ``resource.url``) as
      ``extra.resource`` in each Tally offer.
    """

    scheme = SCHEME_BATCH_SETTLEMENT
    default_asset_transfer_method = SDK_NO_TRANSFER_METHOD

    def __init__(
        self,
        *,
        assets: AssetScales | Mapping[str, int] | None = None,
        default_asset: str = "USD",
        payment_flow: PaymentFlow = "upfront",
        bind_resource: bool = True,
    ) -> None:
        self._assets = AssetScales.coerce(assets)
        if default_asset not in self._assets:
            raise ValueError(f"the default asset {default_asset!r} needs a scale in assets")
        if payment_flow not in ("upfront", "authorization"):
            raise ValueError("payment_flow is 'upfront' or 'authorization'")
        self._default_asset = default_asset
        self._bind_resource = bind_resource
        self._money_parsers: list[MoneyParser] = []
        self.payment_flows: Mapping[str, PaymentFlowConfig] = {
            SDK_NO_TRANSFER_METHOD: {
                "supported": ("upfront", "authorization"),
                "default": payment_flow,
            }
        }

    @property
    def assets(self) -> AssetScales:
        return self._assets

    def register_money_parser(self, parser: MoneyParser) -> BatchSettlementTallyScheme:
        """Tried in order before the default conversion; return ``None`` to pass."""
        self._money_parsers.append(parser)
        return self

    def get_asset_decimals(self, asset: str, network: Network) -> int | None:
        """The asset's scale (the SDK uses it for ``$`` settlement overrides)."""
        return self._assets.scale(asset)

    # -- prices ------------------------------------------------------------------------------

    def parse_price(self, price: Price, network: Network) -> AssetAmount:
        if isinstance(price, AssetAmount):
            return self._checked_amount(price.amount, price.asset, price.extra)
        if isinstance(price, dict):
            if "amount" not in price or not price.get("asset"):
                raise ValueError(f"an AssetAmount needs amount and asset on {network}")
            return self._checked_amount(str(price["amount"]), price["asset"], price.get("extra"))
        if isinstance(price, (bool, float)):
            raise TypeError(
                f"price {price!r}: write Tally prices as strings ('$0.01') or integers; "
                "a float cannot say an exact amount"
            )
        if isinstance(price, int):
            decimal, code = str(price), None
        elif isinstance(price, Decimal):
            decimal, code = format(price, "f"), None
        elif isinstance(price, str):
            decimal, code = parse_money(price)
        else:
            raise TypeError(f"unsupported price {price!r}")
        for parser in self._money_parsers:
            parsed = parser(decimal, str(network))
            if parsed is not None:
                return parsed
        asset = code or self._default_asset
        if asset not in self._assets:
            raise ValueError(f"price {price!r}: asset {asset} has no known scale")
        units = self._assets.to_units(decimal, asset)
        if units == 0:
            raise ValueError(f"price {price!r} is less than one smallest unit of {asset}")
        return AssetAmount(amount=str(units), asset=asset, extra={})

    @staticmethod
    def _checked_amount(amount: str, asset: str, extra: dict[str, Any] | None) -> AssetAmount:
        try:
            if parse_amount(amount) == 0:
                raise ValueError("a Tally price is at least one smallest unit")
            check_asset(asset)
        except IouFieldError as error:
            raise ValueError(str(error)) from None
        return AssetAmount(amount=amount, asset=asset, extra=dict(extra or {}))

    def enhance_payment_requirements(
        self,
        requirements: PaymentRequirements,
        supported_kind: SupportedKind,
        extensions: list[str],
    ) -> PaymentRequirements:
        if not requirements.asset:
            requirements.asset = self._default_asset
        if "." in requirements.amount:
            scale = self._assets.scale(requirements.asset)
            if scale is None:
                raise ValueError(
                    f"asset {requirements.asset} has no known scale; give amounts in smallest units"
                )
            requirements.amount = str(to_smallest_units(requirements.amount, scale))
        try:
            parse_amount(requirements.amount)
            check_asset(requirements.asset)
            check_payee(requirements.pay_to)
        except IouFieldError as error:
            raise ValueError(f"not a valid Tally offer: {error}") from None
        if requirements.extra is None:
            requirements.extra = {}
        return requirements

    def validate_facilitator_support(
        self,
        network: Network,
        supported_kind: SupportedKind,
        facilitator_extensions: list[str],
    ) -> str | None:
        """Refuses, at start-up, a facilitator for ``tally:*`` that does not take Tally IOUs."""
        if not str(network).startswith(NETWORK_PREFIX):
            return None
        formats = (supported_kind.extra or {}).get("formats")
        if isinstance(formats, list) and FORMAT_TALLY_IOU not in formats:
            return f"the facilitator does not accept {FORMAT_TALLY_IOU} payloads"
        return None

    # -- the resource binding ----------------------------------------------------------------

    def enrich_payment_required_response(
        self, context: SchemePaymentRequiredContext
    ) -> list[PaymentRequirements] | None:
        """Names the resource in each Tally offer: ``extra.resource`` = the 402's ``resource.url``.

        That URL is the request's (``route.resource`` if the route fixes one),
        and the SDK also copies it into the client's payment as
        ``resource.url``, so the two always agree as Tally requires. Offers
        already naming a resource are left alone. The SDK lets a scheme add
        fields only to the offers of the one network it is enriching for, so
        with Tally offers on several networks in one route nothing is added
        (the facilitator then binds to the payment's ``resource.url``).
        """
        if not self._bind_resource:
            return None
        url = context.resource_info.url if context.resource_info is not None else None
        if not url:
            return None
        ours = [
            index
            for index, req in enumerate(context.requirements)
            if req.scheme == self.scheme
            and req.network.startswith(NETWORK_PREFIX)
            and "resource" not in (req.extra or {})
        ]
        if not ours:
            return None
        if len({context.requirements[index].network for index in ours}) != 1:
            logger.warning("tally: Tally offers on several networks; extra.resource not set")
            return None
        enriched = list(context.requirements)
        for index in ours:
            req = enriched[index]
            enriched[index] = req.model_copy(
                update={"extra": {**(req.extra or {}), "resource": url}}
            )
        return enriched
