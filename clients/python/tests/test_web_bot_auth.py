"""Web Bot Auth (RFC 9421, Ed25519) on the x402 client, checked three ways.

1. Each signature verifies under ``http_message_signatures.HTTPMessageVerifier`` and
   under a signature base rebuilt here by hand (checked with ``cryptography``).
2. The SDK's httpx client, with :class:`WebBotAuthTransport` inside, pays the SDK's
   FastAPI middleware (a real ``tally serve`` as facilitator): the paid retry the site
   receives carries a valid signature over its ``PAYMENT-SIGNATURE``, and Tally
   accepts and records the IOU payments.
3. A ``web-bot-auth`` payment posted to Tally's ``/verify`` and ``/settle`` is accepted
   and recorded: the ledger keeps the signature base rebuilt here, and the recorded
   signature verifies over it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import FastAPI, Request
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
)
from http_message_signatures.algorithms import ED25519
from http_message_signatures.structures import CaseInsensitiveDict
from x402 import x402Client, x402ResourceServer
from x402.http import PaymentOption, RouteConfig
from x402.http.middleware.fastapi import payment_middleware
from x402.http.utils import decode_payment_response_header

from tally_x402 import Payer, SignedIou, parse_commitment_id
from tally_x402.admin import TallyQuery
from tally_x402.batch_settlement import (
    register_tally_client,
    register_tally_server,
    tally_facilitator,
)
from tally_x402.webbotauth import (
    WEB_BOT_AUTH_COMPONENTS,
    WebBotAuthSigner,
    jwk_thumbprint,
    request_authority,
    sign_web_bot_auth,
    signature_agent_header,
    x402_web_bot_auth_client,
)

from .conftest import NETWORK, TallyServer
from .test_sdk_end_to_end import UvicornThread

AGENT = "https://crawler.example"
PRICE = 1000


# --- an independent reader of the signatures -----------------------------------------


class OneKey(HTTPSignatureKeyResolver):
    def __init__(self, keyid: str, public_key: Ed25519PublicKey) -> None:
        self.keyid, self.public_key = keyid, public_key

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey:
        if key_id != self.keyid:
            raise InvalidSignature(f"unknown keyid {key_id}")
        return self.public_key


@dataclass
class Message:
    url: str
    headers: Any
    method: str = "GET"


def library_verify(url: str, headers: dict[str, str], public_key: bytes) -> dict[str, Any]:
    """``HTTPMessageVerifier`` (its own component resolver: ``@authority`` from the URL)."""
    key = Ed25519PublicKey.from_public_bytes(public_key)
    verifier = HTTPMessageVerifier(
        signature_algorithm=ED25519, key_resolver=OneKey(jwk_thumbprint(public_key), key)
    )
    message = Message(url, CaseInsensitiveDict(headers))  # field names ignore case
    [result] = verifier.verify(message, max_age=datetime.timedelta(minutes=5))
    return {"label": result.label, "components": result.covered_components, **result.parameters}


def thumbprint_by_hand(public_key: bytes) -> str:
    x = base64.urlsafe_b64encode(public_key).rstrip(b"=").decode()
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(jwk.encode()).digest()).rstrip(b"=").decode()


def rebuild_base(authority: str, headers: dict[str, str], signature_input: str) -> bytes:
    """RFC 9421 section 2.5, by hand: one line per component, then ``@signature-params``."""
    label, _, params = signature_input.partition("=")
    assert label == "sig1"
    match = re.fullmatch(r"\(([^)]*)\)(;.*)", params)
    assert match is not None, signature_input
    lower = {k.lower(): v for k, v in headers.items()}
    lines = []
    for component in match.group(1).split(" "):
        name = component.strip('"')
        lines.append(f"{component}: {authority if name == '@authority' else lower[name]}")
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("ascii")


def raw_signature(signature: str) -> bytes:
    match = re.fullmatch(r"sig1=:([A-Za-z0-9+/=]+):", signature)
    assert match is not None, signature
    return base64.b64decode(match.group(1))


def parameters(signature_input: str) -> dict[str, str]:
    return dict(re.findall(r';([a-z]+)=("[^"]*"|\d+)', signature_input))


def payment_signature_header(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


# --- 1. the signature itself -----------------------------------------------------------


def test_the_jwk_thumbprint_is_rfc_8037s() -> None:
    # RFC 8037 appendix A.3.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert jwk_thumbprint(x) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    key = Payer.generate().public_key
    assert jwk_thumbprint(key) == thumbprint_by_hand(key)


def test_a_signature_verifies_independently_and_covers_what_tally_requires() -> None:
    payer = Payer.generate()
    payment = payment_signature_header({"x402Version": 2, "payload": {"amount": "1000"}})
    now = int(time.time())
    signed = sign_web_bot_auth("daily.example", AGENT, payment, payer, created=now)
    headers = {"Payment-Signature": payment, **signed.as_dict()}
    assert signed.signature_agent == '"https://crawler.example"'

    result = library_verify("https://daily.example/article?id=7", headers, payer.public_key)
    assert result["label"] == "sig1"
    assert list(result["components"]) == [
        '"@authority"',
        '"signature-agent"',
        '"payment-signature"',
        '"@signature-params"',
    ]
    assert result["components"]['"@authority"'] == "daily.example"
    assert result["components"]['"payment-signature"'] == payment

    params = parameters(signed.signature_input)
    assert signed.signature_input.startswith(
        'sig1=("@authority" "signature-agent" "payment-signature");'
    )
    assert set(params) == {"created", "expires", "keyid", "alg", "nonce", "tag"}
    assert int(params["created"]) == now and int(params["expires"]) == now + 60
    assert params["keyid"] == f'"{thumbprint_by_hand(payer.public_key)}"'
    assert (params["alg"], params["tag"]) == ('"ed25519"', '"web-bot-auth"')

    # The same base, rebuilt by hand, under the key with cryptography.
    base = rebuild_base("daily.example", headers, signed.signature_input)
    pub = Ed25519PublicKey.from_public_bytes(payer.public_key)
    pub.verify(raw_signature(signed.signature), base)

    # Every signature has a fresh nonce; given everything, signing is deterministic.
    again = sign_web_bot_auth("daily.example", AGENT, payment, payer, created=now)
    assert parameters(again.signature_input)["nonce"] != params["nonce"]
    fixed = {"created": now, "expires": now + 300, "nonce": "n-1"}
    one = sign_web_bot_auth("daily.example", f'"{AGENT}"', payment, payer.seed(), **fixed)
    two = sign_web_bot_auth(
        "daily.example", AGENT, payment, Ed25519PrivateKey.from_private_bytes(payer.seed()), **fixed
    )
    assert one == two

    # Tampering: another payment, another host, another key.
    tampered = {**headers, "Payment-Signature": payment_signature_header({"x402Version": 2})}
    with pytest.raises(InvalidSignature):
        library_verify("https://daily.example/article", tampered, payer.public_key)
    with pytest.raises(InvalidSignature):
        library_verify("https://elsewhere.example/article", headers, payer.public_key)
    with pytest.raises(InvalidSignature):
        library_verify("https://daily.example/", headers, Payer.generate().public_key)


def test_inputs_tally_would_refuse_are_refused_before_signing() -> None:
    payer = Payer.generate()
    with pytest.raises(ValueError, match="validity"):
        WebBotAuthSigner(payer, AGENT, validity_seconds=301)
    with pytest.raises(ValueError, match="expires"):
        sign_web_bot_auth("a.example", AGENT, "eA==", payer, created=100, expires=401)
    with pytest.raises(ValueError, match="expires"):
        sign_web_bot_auth("a.example", AGENT, "eA==", payer, created=100, expires=100)
    with pytest.raises(ValueError, match="visible ASCII"):
        sign_web_bot_auth("a.example", AGENT, "eA==\r\nx: y", payer)
    with pytest.raises(ValueError, match="signature agent"):
        signature_agent_header('https://a.example/"x')
    with pytest.raises(ValueError, match="lowercase"):
        sign_web_bot_auth("A.example", AGENT, "eA==", payer)
    assert signature_agent_header('"https://a.example"') == '"https://a.example"'
    assert request_authority("https://Daily.Example:443/a?b") == "daily.example"
    assert request_authority("http://127.0.0.1:8080/") == "127.0.0.1:8080"
    assert request_authority("http://[::1]:81/") == "[::1]:81"


# --- 2. the SDK client, signing its paid retry -----------------------------------------


@dataclass
class Site:
    running: UvicornThread
    payee: str
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@pytest.fixture
def wba_site(tally: TallyServer, unique: str) -> Iterator[Site]:
    payee = f"wba-site-{unique}.example"
    tally.register_payee(payee)
    server = register_tally_server(x402ResourceServer(tally_facilitator(tally.facilitator_url)))
    offer = PaymentOption(scheme="batch-settlement", network=NETWORK, pay_to=payee, price="$0.001")
    app = FastAPI()
    app.middleware("http")(
        payment_middleware({"GET /articles/*": RouteConfig(accepts=offer)}, server)
    )
    seen: list[tuple[str, dict[str, str]]] = []

    @app.middleware("http")  # added last, so outermost: it sees every request, 402s included
    async def record(request: Request, call_next: Any) -> Any:
        seen.append((str(request.url), dict(request.headers)))
        return await call_next(request)

    @app.get("/articles/{name}")
    async def article(name: str) -> dict[str, str]:
        return {"article": name}

    with UvicornThread(app) as running:
        yield Site(running, payee, seen)


def test_the_sdk_client_pays_with_web_bot_auth_headers_and_tally_records_it(
    tally: TallyServer, wba_site: Site, unique: str
) -> None:
    payer = Payer.generate()
    payer_id = f"wba-sdk-{unique}"
    tally.register_payer(payer_id, payer.public_key_hex)
    client = register_tally_client(x402Client(), payer)
    signer = WebBotAuthSigner(payer, AGENT)
    paid_urls = [wba_site.running.url(f"/articles/a{i}") for i in range(3)]
    identified_url = wba_site.running.url("/articles/identified")

    async def run() -> list[httpx.Response]:
        async with x402_web_bot_auth_client(client, signer, timeout=30) as http:
            responses = [await http.get(url) for url in paid_urls]
        async with x402_web_bot_auth_client(client, signer, sign_unpaid=True, timeout=30) as http:
            responses.append(await http.get(identified_url))
        return responses

    responses = asyncio.run(run())
    transactions = set()
    for response in responses:
        assert response.status_code == 200, (response.status_code, response.headers)
        settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
        assert settled.success, settled
        assert settled.amount == str(PRICE)
        parse_commitment_id(settled.transaction)
        transactions.add(settled.transaction)
    assert len(transactions) == 4

    # What the site received: per page a 402'd first request and a paid, signed retry.
    urls = [*paid_urls, identified_url]
    assert [url for url, _ in wba_site.seen] == [url for url in urls for _ in ("402", "paid")]
    for (url, first), (_, retry) in zip(wba_site.seen[::2], wba_site.seen[1::2], strict=True):
        assert "payment-signature" not in first
        if url == identified_url:  # sign_unpaid: the first request identifies the crawler
            unpaid = library_verify(url, first, payer.public_key)
            assert list(unpaid["components"])[:-1] == ['"@authority"', '"signature-agent"']
        else:
            assert "signature" not in first and "signature-input" not in first
        result = library_verify(url, retry, payer.public_key)
        components = [c.strip('"') for c in list(result["components"])[:-1]]
        assert tuple(components) == WEB_BOT_AUTH_COMPONENTS
        assert result["components"]['"@authority"'] == request_authority(url)
        assert retry["signature-agent"] == '"https://crawler.example"'
        base = rebuild_base(request_authority(url), retry, retry["signature-input"])
        public_key = Ed25519PublicKey.from_public_bytes(payer.public_key)
        public_key.verify(raw_signature(retry["signature"]), base)
        # The signed PAYMENT-SIGNATURE is the IOU payment the SDK made for this page.
        payload = json.loads(base64.b64decode(retry["payment-signature"]))
        iou = SignedIou.from_x402_payload(payload["payload"])
        assert iou.verify() and iou.iou.resource == url

    [row] = tally.balance(payee=wba_site.payee)
    assert (row["payer"], int(row["amount_units"]), row["ious"]) == (payer_id, 4 * PRICE, 4)


# --- 3. a web-bot-auth payment, straight to Tally's facilitator -----------------------


def test_a_web_bot_auth_payment_is_verified_settled_and_recorded_by_tally(
    tally: TallyServer, unique: str
) -> None:
    payer = Payer.generate()
    payer_id = f"wba-direct-{unique}"
    payee = f"wba-direct-{unique}.example"
    agent = f"https://crawler-{unique}.example"
    tally.register_payer(payer_id, payer.public_key_hex)
    tally.cli("payer", "set-agent", payer_id, "--agent", agent)
    tally.register_payee(payee)
    resource = f"https://{payee}/article"
    requirements = {
        "scheme": "batch-settlement",
        "network": NETWORK,
        "amount": str(PRICE),
        "asset": "USD",
        "payTo": payee,
        "maxTimeoutSeconds": 300,
        "extra": {"resource": resource},
    }

    def payment(memo: int = 0, **signing: Any) -> tuple[dict[str, Any], str, bytes]:
        """A facilitator request for one signed request, its PAYMENT-SIGNATURE and base."""
        header = payment_signature_header(
            {
                "x402Version": 2,
                "accepted": requirements,
                "payload": {"amount": str(PRICE), "asset": "USD", "memo": memo},
                "resource": {"url": resource},
            }
        )
        signed = sign_web_bot_auth(payee, signing.pop("agent", agent), header, payer, **signing)
        forwarded = {
            "format": "web-bot-auth",
            "authority": payee,
            "signatureAgent": signed.signature_agent,
            "signatureInput": signed.signature_input,
            "signature": signed.signature,
            "paymentSignature": header,
        }
        body = {
            "x402Version": 2,
            "paymentPayload": {"x402Version": 2, "accepted": requirements, "payload": forwarded},
            "paymentRequirements": requirements,
        }
        headers = {"signature-agent": signed.signature_agent, "payment-signature": header}
        return body, header, rebuild_base(payee, headers, signed.signature_input)

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{tally.facilitator_url}{path}", json=body, timeout=30)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    body, _, base = payment()
    verdict = post("/verify", body)
    assert verdict["isValid"] is True, verdict
    assert verdict["payer"] == payer_id
    assert tally.balance(payee=payee) == []  # /verify records nothing

    settled = post("/settle", body)
    assert settled["success"] is True, settled
    assert (settled["payer"], settled["amount"], settled["network"]) == (payer_id, "1000", NETWORK)
    seq, record_hash = parse_commitment_id(settled["transaction"])
    replay = post("/settle", body)  # the same signed request buys nothing more
    assert replay["success"] is False and replay["errorReason"]

    # Refusals with the binding's generic codes; none records anything.
    now = int(time.time())
    tampered, _, _ = payment(memo=1)
    tampered["paymentPayload"]["payload"]["paymentSignature"] = payment(memo=2)[1]
    moved, _, _ = payment(memo=3)
    moved["paymentPayload"]["payload"]["authority"] = "elsewhere.example"
    expired, _, _ = payment(memo=4, created=now - 1000, expires=now - 900)
    other_agent, _, _ = payment(memo=5, agent="https://someone-else.example")
    for name, refused, code in [
        ("tampered payment", tampered, "invalid_signature"),
        ("other authority", moved, "invalid_signature"),
        ("expired", expired, "invalid_signature"),
        ("not the registered agent", other_agent, "signature_agent_unknown"),
    ]:
        assert post("/verify", refused)["invalidReason"] == code, name
        assert post("/settle", refused)["errorReason"] == code, name

    [row] = tally.balance(payee=payee)
    assert (row["payer"], int(row["amount_units"]), row["ious"]) == (payer_id, PRICE, 1)

    # The ledger holds the base rebuilt here, and the signature verifies over it.
    nonce = hashlib.sha256(b"tally-wba-nonce-v1" + base).digest()[:16]
    with TallyQuery(tally.grpc_url, token=tally.token) as query:
        record = query.get_iou(payer.public_key, nonce)
        receipt = query.receipt(payer.public_key, nonce)
    assert record.found and receipt.found
    assert (record.commitment.seq, record.commitment.hash) == (seq, record_hash)
    assert record.evidence_format == receipt.evidence_format == "web-bot-auth"
    assert record.evidence.startswith(b"tally-wba-v1") and record.evidence.endswith(base)
    assert (record.iou.payee, record.iou.amount, record.iou.resource) == (payee, PRICE, resource)
    assert record.charged == PRICE
    assert receipt.signed_message == base
    Ed25519PublicKey.from_public_bytes(payer.public_key).verify(receipt.signature, base)
