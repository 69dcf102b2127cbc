#!/usr/bin/env python3
"""A pay-per-crawl crawler, written against Cloudflare's header dialect alone.

It knows nothing of x402 or of Tally: it fetches a URL, reads `crawler-price`
from the 402, and retries with `crawler-max-price` (or `crawler-exact-price`)
covered by a Web Bot Auth signature (RFC 9421, Ed25519, tag "web-bot-auth",
keyid the RFC 7638 JWK thumbprint), signed with the independent PyPI
implementation `http-message-signatures`. That is what a crawler built for
Cloudflare's pay-per-crawl sends, so a Tally gateway that charges it proves a
crawler can pay a Tally-gated site without changes.

    python3 scripts/interop/pay_per_crawl.py --seed HEX --url URL \
        [--max-price "USD 0.05" | --exact-price "USD 0.01" | --exact-from-offer] \
        [--agent https://crawler.example] [--created UNIX] [--replay-to URL]

Prints one JSON object per request made: status, the crawler-* headers, and
the body's length and its first bytes. `--replay-to` sends the same signed
headers again to another URL (a replay must be refused).

Needs `http-message-signatures`, `requests` and `cryptography`.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import sys

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

TIMEOUT_S = 10


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(public: bytes) -> str:
    """RFC 7638: SHA-256 over the JWK's required members in lexicographic order."""
    jwk = '{"crv":"Ed25519","kty":"OKP","x":"%s"}' % b64url(public)
    return b64url(hashlib.sha256(jwk.encode()).digest())


class OneKey(HTTPSignatureKeyResolver):
    def __init__(self, key):
        self.key = key

    def resolve_private_key(self, key_id):
        return self.key

    def resolve_public_key(self, key_id):
        return self.key.public_key()


def report(response):
    return {
        "status": response.status_code,
        "crawler_price": response.headers.get("crawler-price"),
        "crawler_charged": response.headers.get("crawler-charged"),
        "crawler_error": response.headers.get("crawler-error"),
        "body_len": len(response.content),
        "body_head": response.content[:64].decode("utf-8", "replace"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", required=True, help="Ed25519 private key seed, 32 bytes hex")
    parser.add_argument("--url", required=True)
    parser.add_argument("--agent", default="https://crawler.example")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--max-price")
    group.add_argument("--exact-price")
    group.add_argument("--exact-from-offer", action="store_true", help="pay exactly the 402's crawler-price")
    parser.add_argument("--created", type=int, help="signature creation time (default: now)")
    parser.add_argument("--replay-to", help="send the same signed headers to this URL afterwards")
    args = parser.parse_args()

    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args.seed))
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    session = requests.Session()

    first = session.get(args.url, timeout=TIMEOUT_S)
    print(json.dumps(report(first)))
    if first.status_code != 402:
        return 0
    if args.exact_price:
        header, price = "crawler-exact-price", args.exact_price
    elif args.exact_from_offer:
        header, price = "crawler-exact-price", first.headers["crawler-price"]
    else:
        header, price = "crawler-max-price", args.max_price or first.headers["crawler-price"]

    request = requests.Request("GET", args.url, headers={header: price, "Signature-Agent": f'"{args.agent}"'})
    prepared = session.prepare_request(request)
    created = datetime.datetime.fromtimestamp(args.created or int(datetime.datetime.now().timestamp()))
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=OneKey(key))
    signer.sign(
        prepared,
        key_id=thumbprint(public),
        created=created,
        expires=created + datetime.timedelta(seconds=60),
        nonce=b64url(os.urandom(16)),
        label="sig1",
        tag="web-bot-auth",
        covered_component_ids=("@authority", "signature-agent", header),
    )
    paid = session.send(prepared, timeout=TIMEOUT_S)
    print(json.dumps(report(paid)))
    if args.replay_to:
        replay = requests.Request("GET", args.replay_to, headers=dict(prepared.headers))
        print(json.dumps(report(session.send(session.prepare_request(replay), timeout=TIMEOUT_S))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
