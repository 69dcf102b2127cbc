"""The official x402 SDK, end to end, with Tally as facilitator.

A FastAPI app behind the SDK's own payment middleware (``x402ResourceServer``
with this package's server scheme, the SDK's ``HTTPFacilitatorClient`` pointed
at a real ``tally serve``), run by uvicorn on 127.0.0.1 port 0; the SDK's
``x402HttpxClient`` with this package's client scheme pays it. The ledger must
hold exactly the payments the client saw accepted.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Response
from x402 import x402Client, x402ResourceServer
from x402.http import PaymentOption, RouteConfig
from x402.http.clients.httpx import x402HttpxClient
from x402.http.middleware.fastapi import payment_middleware, set_settlement_overrides
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentCreatedContext, PaymentPayload

from tally_x402 import Payer, SignedIou, parse_commitment_id, payment_id_nonce
from tally_x402.admin import TallyQuery
from tally_x402.batch_settlement import (
    register_tally_client,
    register_tally_server,
    tally_facilitator,
)

from .conftest import NETWORK, TallyServer

ARTICLE_PRICE = 1000  # "$0.001" in micro-dollars
METERED_OFFER = 2000  # "$0.002", of which the handler charges 700
METERED_CHARGE = 700
PAYMENT_ID_DECLARATION = {
    "info": {"required": True},
    "schema": {
        "type": "object",
        "properties": {"required": {"type": "boolean"}, "id": {"type": "string"}},
        "required": ["required"],
    },
}


class UvicornThread:
    """uvicorn serving ``app`` on a socket bound here to 127.0.0.1 port 0."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def build_site(tally: TallyServer, payee: str) -> FastAPI:
    server = x402ResourceServer(tally_facilitator(tally.facilitator_url))
    register_tally_server(server)

    def offer(price: str, extra: dict[str, object] | None = None) -> PaymentOption:
        return PaymentOption(
            scheme="batch-settlement", pay_to=payee, price=price, network=NETWORK, extra=extra
        )

    routes = {
        "GET /articles/*": RouteConfig(accepts=offer("$0.001"), description="An article"),
        "GET /ids/*": RouteConfig(
            accepts=offer("$0.001"), extensions={"payment-identifier": PAYMENT_ID_DECLARATION}
        ),
        "GET /metered/*": RouteConfig(
            accepts=offer("$0.002", {"paymentFlow": "authorization"}), description="Metered"
        ),
    }
    app = FastAPI()
    app.middleware("http")(payment_middleware(routes, server))

    @app.get("/articles/{name}")
    async def article(name: str) -> dict[str, str]:
        return {"article": name}

    @app.get("/ids/{name}")
    async def with_id(name: str) -> dict[str, str]:
        return {"article": name}

    @app.get("/metered/{name}")
    async def metered(name: str, response: Response) -> dict[str, str]:
        set_settlement_overrides(response, {"amount": str(METERED_CHARGE)})
        return {"metered": name}

    @app.get("/free")
    async def free() -> dict[str, str]:
        return {"free": "yes"}

    return app


@dataclass
class Paid:
    url: str
    transaction: str
    amount: int
    payload: PaymentPayload


@pytest.fixture
def site(tally: TallyServer, unique: str) -> Iterator[tuple[UvicornThread, str]]:
    payee = f"site-{unique}.example"
    tally.register_payee(payee)
    with UvicornThread(build_site(tally, payee)) as running:
        yield running, payee


def paying_client(payer: Payer, captured: list[PaymentPayload]) -> x402Client:
    client = x402Client()
    register_tally_client(client, payer)

    def keep(context: PaymentCreatedContext) -> None:
        assert isinstance(context.payment_payload, PaymentPayload)
        captured.append(context.payment_payload)

    client.on_after_payment_creation(keep)
    return client


async def fetch_all(client: x402Client, urls: list[str]) -> list[httpx.Response]:
    async with x402HttpxClient(client, timeout=30) as http:
        return [await http.get(url) for url in urls]


def test_unpaid_request_gets_a_tally_offer_bound_to_its_url(
    site: tuple[UvicornThread, str],
) -> None:
    running, payee = site
    url = running.url("/articles/unpaid?page=2")
    response = httpx.get(url)
    assert response.status_code == 402
    required = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    assert required.x402_version == 2
    assert required.resource is not None and required.resource.url == url
    [offer] = required.accepts
    assert offer.scheme == "batch-settlement"
    assert offer.network == NETWORK
    assert (offer.asset, offer.amount, offer.pay_to) == ("USD", str(ARTICLE_PRICE), payee)
    assert offer.extra["resource"] == url
    assert offer.extra["paymentFlow"] == "upfront"
    assert httpx.get(running.url("/free")).status_code == 200


def test_sdk_client_pays_sdk_server_and_the_ledger_holds_exactly_those_payments(
    tally: TallyServer, site: tuple[UvicornThread, str], unique: str
) -> None:
    running, payee = site
    payer = Payer.generate()
    payer_id = f"crawler-{unique}"
    tally.register_payer(payer_id, payer.public_key_hex)
    captured: list[PaymentPayload] = []
    client = paying_client(payer, captured)

    urls = [running.url(f"/articles/a{i}?q={i}") for i in range(6)]
    urls += [running.url(f"/ids/b{i}") for i in range(3)]
    urls += [running.url(f"/metered/c{i}") for i in range(3)]
    responses = asyncio.run(fetch_all(client, urls))
    assert len(captured) == len(urls)

    paid: list[Paid] = []
    for url, response, payload in zip(urls, responses, captured, strict=True):
        assert response.status_code == 200, (url, response.status_code, response.headers)
        settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
        assert settled.success, settled
        assert settled.network == NETWORK
        assert settled.payer in (payer_id, payer.public_key_hex)
        parse_commitment_id(settled.transaction)  # <seq>:<hash>
        assert settled.amount is not None
        paid.append(Paid(url, settled.transaction, int(settled.amount), payload))

        iou = SignedIou.from_x402_payload(payload.payload)
        assert iou.verify()
        assert iou.iou.resource == url  # bound to the page bought
        assert iou.iou.payee == payee and iou.iou.payer_key == payer.public_key
        if "/ids/" in url:
            assert payload.extensions is not None
            payment_id = payload.extensions["payment-identifier"]["info"]["id"]
            assert iou.iou.nonce == payment_id_nonce(payment_id)
        if "/metered/" in url:
            assert iou.iou.amount == METERED_OFFER
            assert int(settled.amount) == METERED_CHARGE  # dynamic pricing: charged less
        else:
            assert int(settled.amount) == ARTICLE_PRICE
    assert len({p.transaction for p in paid}) == len(paid)

    # A replay buys nothing more: the same payment for the same page (no payment id),
    # and the same payment for another page.
    first = paid[0]
    header = {"PAYMENT-SIGNATURE": encode_payment_signature_header(first.payload)}
    again = httpx.get(first.url, headers=header)
    assert again.status_code == 402
    settled_again = decode_payment_response_header(again.headers["PAYMENT-RESPONSE"])
    assert not settled_again.success and settled_again.error_reason
    elsewhere = httpx.get(running.url("/articles/other"), headers=header)
    assert elsewhere.status_code == 402

    # With a payment identifier, a retry of the same request is answered from the
    # ledger: served again, the original commitment, no second charge.
    with_id = next(p for p in paid if "/ids/" in p.url)
    retry_header = {"PAYMENT-SIGNATURE": encode_payment_signature_header(with_id.payload)}
    retried = httpx.get(with_id.url, headers=retry_header)
    assert retried.status_code == 200
    cached = decode_payment_response_header(retried.headers["PAYMENT-RESPONSE"])
    assert cached.success and cached.transaction == with_id.transaction

    # The ledger: exactly the accepted payments, at the charges the client saw.
    rows = tally.balance(payee=payee)
    assert [(r["payer"], r["asset"]) for r in rows] == [(payer_id, "USD")]
    assert int(rows[0]["amount_units"]) == sum(p.amount for p in paid)
    assert rows[0]["ious"] == len(paid)

    # And each commitment is the IOU the client signed, at its charge.
    with TallyQuery(tally.grpc_url, token=tally.token) as query:
        for p in paid:
            iou = SignedIou.from_x402_payload(p.payload.payload).iou
            record = query.get_iou(iou.payer_key, iou.nonce)
            assert record.found
            seq, record_hash = parse_commitment_id(p.transaction)
            assert (record.commitment.seq, record.commitment.hash) == (seq, record_hash)
            assert record.charged == p.amount
            assert record.evidence == iou.signing_bytes()


def test_a_payer_over_its_credit_limit_is_refused_insufficient_funds(
    tally: TallyServer, site: tuple[UvicornThread, str], unique: str
) -> None:
    running, payee = site
    payer = Payer.generate()
    tally.register_payer(f"small-{unique}", payer.public_key_hex, limit="0.0015")
    captured: list[PaymentPayload] = []
    client = paying_client(payer, captured)
    ok, refused = asyncio.run(
        fetch_all(client, [running.url("/articles/first"), running.url("/articles/second")])
    )
    assert ok.status_code == 200
    assert refused.status_code == 402
    settled = decode_payment_response_header(refused.headers["PAYMENT-RESPONSE"])
    assert not settled.success
    assert settled.error_reason == "insufficient_funds"
    rows = tally.balance(payee=payee)
    assert sum(int(r["amount_units"]) for r in rows) == ARTICLE_PRICE
