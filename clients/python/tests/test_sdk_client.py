"""The client scheme inside the SDK's own ``x402Client`` / ``x402ClientSync`` (no server needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from x402 import x402Client, x402ClientSync
from x402.schemas import (
    NoMatchingRequirementsError,
    PaymentPayload,
    PaymentRequired,
    PaymentRequirements,
    ResourceInfo,
)

from tally_x402 import Payer, SignedIou, payment_id_nonce
from tally_x402.batch_settlement import register_tally_client

URL = "https://daily.example/article?id=7"


def offer(**changes: Any) -> PaymentRequirements:
    fields: dict[str, Any] = {
        "scheme": "batch-settlement",
        "network": "tally:local",
        "asset": "USD",
        "amount": "1500",
        "pay_to": "daily.example",
        "max_timeout_seconds": 300,
        "extra": {},
    }
    fields.update(changes)
    return PaymentRequirements(**fields)


def required(*accepts: PaymentRequirements, **changes: Any) -> PaymentRequired:
    fields: dict[str, Any] = {"resource": ResourceInfo(url=URL), "accepts": list(accepts)}
    fields.update(changes)
    return PaymentRequired(**fields)


def pay(client: x402Client, payment_required: PaymentRequired) -> PaymentPayload:
    payload = asyncio.run(client.create_payment_payload(payment_required))
    assert isinstance(payload, PaymentPayload)
    return payload


def test_signs_the_offer_for_its_named_resource() -> None:
    payer = Payer.generate()
    client = register_tally_client(x402Client(), payer, clock=lambda: 1_767_225_600.9)
    payload = pay(client, required(offer(extra={"resource": "https://daily.example/named"})))
    signed = SignedIou.from_x402_payload(payload.payload)
    assert signed.verify()
    iou = signed.iou
    assert (iou.network, iou.payee, iou.asset, iou.amount) == (
        "tally:local",
        "daily.example",
        "USD",
        1500,
    )
    assert iou.resource == "https://daily.example/named"
    assert (iou.issued_at, iou.expires_at) == (1_767_225_600, 1_767_225_900)
    assert payload.accepted.pay_to == "daily.example"
    assert payload.extensions is None


def test_without_extra_resource_the_402_resource_url_is_signed() -> None:
    client = register_tally_client(x402Client(), Payer.generate())
    payload = pay(client, required(offer()))
    assert SignedIou.from_x402_payload(payload.payload).iou.resource == URL
    # The sync client runs the same scheme hooks.
    sync = register_tally_client(x402ClientSync(), Payer.generate())
    sync_payload = sync.create_payment_payload(required(offer()))
    assert isinstance(sync_payload, PaymentPayload)
    assert SignedIou.from_x402_payload(sync_payload.payload).iou.resource == URL


def test_an_offer_naming_no_resource_at_all_is_not_signed() -> None:
    client = register_tally_client(x402Client(), Payer.generate())
    with pytest.raises(ValueError, match="names no resource"):
        pay(client, required(offer(), resource=None))


def test_a_declared_payment_identifier_becomes_the_nonce() -> None:
    client = register_tally_client(x402Client(), Payer.generate())
    declared = {"payment-identifier": {"info": {"required": False}, "schema": {"type": "object"}}}
    payload = pay(client, required(offer(), extensions=declared))
    assert payload.extensions is not None
    extension = payload.extensions["payment-identifier"]
    assert extension["info"]["required"] is False and extension["schema"] == {"type": "object"}
    nonce = SignedIou.from_x402_payload(payload.payload).iou.nonce
    assert nonce == payment_id_nonce(extension["info"]["id"])
    # Two payments, two ids.
    again = pay(client, required(offer(), extensions=declared))
    assert again.extensions is not None
    assert again.extensions["payment-identifier"]["info"]["id"] != extension["info"]["id"]


def test_sdk_spend_controls_see_tally_assets() -> None:
    client = register_tally_client(x402Client(), Payer.generate())
    # $1 is the SDK's default cap: 1,000,000 micro-dollars passes, one more does not.
    assert pay(client, required(offer(amount="1000000")))
    with pytest.raises(NoMatchingRequirementsError):
        pay(client, required(offer(amount="1000001")))
    # An asset the scheme has no scale for is not a default asset.
    with pytest.raises(NoMatchingRequirementsError):
        pay(client, required(offer(asset="EUR")))
    eur = register_tally_client(x402Client(), Payer.generate(), assets={"USD": 6, "EUR": 2})
    assert pay(eur, required(offer(asset="EUR", amount="50")))


def test_only_tally_batch_settlement_offers_are_taken() -> None:
    client = register_tally_client(x402Client(), Payer.generate())
    with pytest.raises(NoMatchingRequirementsError):
        pay(client, required(offer(network="eip155:8453")))
    with pytest.raises(NoMatchingRequirementsError):
        pay(client, required(offer(scheme="exact")))
    mixed = required(offer(network="eip155:8453", scheme="exact"), offer())
    assert pay(client, mixed).accepted.network == "tally:local"
    with pytest.raises(Exception, match="canonical"):
        pay(client, required(offer(amount="01500")))
