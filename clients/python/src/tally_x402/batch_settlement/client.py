"""Client side of x402 ``batch-settlement`` on Tally: sign a Tally IOU for an offer.

Register it with the official SDK's client for the network pattern
``tally:*`` (:func:`tally_x402.batch_settlement.register_tally_client`); the
SDK's httpx and requests wrappers then answer a 402 carrying a Tally offer
with a signed IOU (docs/x402-binding.md, section 1).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from x402.interfaces import PaymentPayloadContext
from x402.schemas import (
    PaymentCreatedContext,
    PaymentCreationContext,
    PaymentCreationFailureContext,
    PaymentRequirements,
)

from ..assets import AssetScales
from ..iou import (
    Iou,
    IouFieldError,
    check_asset,
    check_network,
    check_payee,
    parse_amount,
    payment_id_nonce,
)
from ..keys import DEFAULT_VALIDITY_SECONDS, VALIDITY_MAX_SECONDS, Payer
from .constants import NETWORK_PREFIX, SCHEME_BATCH_SETTLEMENT

__all__ = ["PAYMENT_IDENTIFIER", "BatchSettlementTallyScheme", "new_payment_id"]

PAYMENT_IDENTIFIER = "payment-identifier"
"""The x402 idempotency extension's key (importing the SDK's extensions needs jsonschema)."""


def new_payment_id() -> str:
    """A fresh payment identifier: ``pay_`` and 32 random hex digits."""
    return f"pay_{uuid.uuid4().hex}"


class _ResourceStash:
    """Carries the 402's ``resource.url`` from the SDK's before-creation hook to the scheme.

    The SDK calls ``before_payment_creation`` with the whole ``PaymentRequired``
    and then ``create_payment_payload`` with the selected requirements object
    (the same object), which alone does not name the resource. Entries are
    keyed by that object's identity and always removed by the end of creation.
    """

    def __init__(self) -> None:
        self._urls: dict[int, str] = {}
        self._lock = threading.Lock()

    LIMIT = 4096
    """Entries left by creations another hook aborted are dropped oldest first past this."""

    def before_payment_creation(self, context: PaymentCreationContext) -> None:
        resource = getattr(context.payment_required, "resource", None)
        url = getattr(resource, "url", None)
        key = id(context.selected_requirements)
        with self._lock:
            if isinstance(url, str):
                self._urls[key] = url
                while len(self._urls) > self.LIMIT:
                    del self._urls[next(iter(self._urls))]
            else:
                self._urls.pop(key, None)

    def after_payment_creation(self, context: PaymentCreatedContext) -> None:
        self.take(context.selected_requirements)

    def on_payment_creation_failure(self, context: PaymentCreationFailureContext) -> None:
        self.take(context.selected_requirements)

    def take(self, requirements: object) -> str | None:
        with self._lock:
            return self._urls.pop(id(requirements), None)


class BatchSettlementTallyScheme:
    """Signs a Tally IOU for a ``batch-settlement`` offer on a ``tally:*`` network.

    * payee = ``payTo``, asset = ``asset``, amount = ``amount`` (the offer);
    * resource = the offer's ``extra.resource`` when the server names it (Tally
      binds each payment to the resource it buys), else the 402's ``resource.url``;
    * nonce = the payment identifier's nonce when the server declared the
      ``payment-identifier`` extension (this scheme then generates the id and
      adds it to the payment, so a retry of the same request is answered from
      the ledger), else 16 random bytes;
    * valid from now for ``validity_seconds`` (300 by default).

    ``assets`` gives the scales of the assets this client knows (USD at 6 by
    default). The SDK's spend controls only let through *default assets*: the
    ones :meth:`find_default_asset` knows, capped at $1 a payment unless
    configured otherwise (``x402Client.set_spend_controls``).
    """

    scheme = SCHEME_BATCH_SETTLEMENT

    def __init__(
        self,
        payer: Payer,
        *,
        assets: AssetScales | Mapping[str, int] | None = None,
        validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
        payment_identifier: bool = True,
        payment_id_factory: Callable[[], str] = new_payment_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= validity_seconds <= VALIDITY_MAX_SECONDS:
            raise ValueError(f"validity_seconds must be 1..={VALIDITY_MAX_SECONDS}")
        self._payer = payer
        self._assets = AssetScales.coerce(assets)
        self._validity = validity_seconds
        self._payment_identifier = payment_identifier
        self._payment_id_factory = payment_id_factory
        self._clock = clock
        self._stash = _ResourceStash()
        # Found by the SDK at registration: its before/after/failure creation hooks.
        self.scheme_hooks = self._stash

    @property
    def payer(self) -> Payer:
        return self._payer

    def find_default_asset(self, asset: str, network: str) -> dict[str, Any] | None:
        """The SDK's default-asset lookup: known assets on ``tally:*`` networks."""
        scale = self._assets.scale(asset)
        if scale is None or not network.startswith(NETWORK_PREFIX):
            return None
        return {"asset": asset, "symbol": asset, "decimals": scale, "name": asset}

    def create_payment_payload(
        self,
        requirements: PaymentRequirements,
        context: PaymentPayloadContext | None = None,
    ) -> dict[str, Any]:
        """The inner ``payload`` (``{"format":"tally-iou-v1","iou":…,"signature":…}``)."""
        stashed_url = self._stash.take(requirements)
        if requirements.scheme != self.scheme:
            raise ValueError(f"not a {self.scheme} offer: {requirements.scheme!r}")
        network = check_network(requirements.network)
        if not network.startswith(NETWORK_PREFIX):
            raise ValueError(f"not a Tally network: {network!r}")
        try:
            amount = parse_amount(requirements.amount)
        except IouFieldError:
            raise ValueError(
                f"offer amount {requirements.amount!r} is not a canonical smallest-unit amount"
            ) from None
        if context is not None and context.max_amount_per_payment is not None:
            cap = int(context.max_amount_per_payment)
            if amount > cap:
                raise ValueError(f"offer amount {amount} is above the spend cap {cap}")

        extra = requirements.extra or {}
        resource = extra.get("resource")
        if resource is None:
            resource = stashed_url
        if not isinstance(resource, str) or not resource:
            raise ValueError("the offer names no resource: a Tally IOU must say what it buys")

        extensions: dict[str, Any] | None = None
        declared = (context.extensions or {}) if context is not None else {}
        if self._payment_identifier and PAYMENT_IDENTIFIER in declared:
            payment_id = self._payment_id_factory()
            nonce = payment_id_nonce(payment_id)
            extensions = {PAYMENT_IDENTIFIER: {"info": {"id": payment_id}}}
        else:
            nonce = os.urandom(16)

        issued_at = int(self._clock())
        iou = Iou(
            network=network,
            payer_key=self._payer.public_key,
            payee=check_payee(requirements.pay_to),
            asset=check_asset(requirements.asset),
            amount=amount,
            nonce=nonce,
            issued_at=issued_at,
            expires_at=issued_at + self._validity,
            resource=resource,
        )
        payload = self._payer.sign(iou).to_x402_payload()
        if extensions is not None:
            # The SDK merges this onto the server's declaration of the extension.
            payload["__extensions"] = extensions
        return payload
