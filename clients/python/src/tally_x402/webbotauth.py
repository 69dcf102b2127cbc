"""Web Bot Auth for the x402 client: RFC 9421 HTTP Message Signatures, Ed25519.

A crawler signs its paid request, so the amount in ``PAYMENT-SIGNATURE`` is bound
to its key and to the site (docs/x402-binding.md, section 1). The signature is what
Tally requires of a ``web-bot-auth`` payment:

* label ``sig1``, covering exactly ``("@authority" "signature-agent" "payment-signature")``;
* parameters ``created``, ``keyid`` (the RFC 7638 JWK thumbprint of the Ed25519 public
  key), ``expires`` (at most 300 s after ``created``), a fresh ``nonce``,
  ``tag="web-bot-auth"`` and ``alg="ed25519"``;
* headers ``Signature-Agent`` (an RFC 8941 string, quotes included), ``Signature-Input``
  and ``Signature``.

RFC 9421 itself (component identifiers, the signature base, the structured-field
serialization) is the ``http-message-signatures`` library's; this module holds the
Web Bot Auth rules and the httpx integration. Install it with the ``webbotauth`` extra:
``pip install "tally-x402[webbotauth]"``.

The x402 SDK's ``x402AsyncTransport`` sends its paid retry through an inner transport;
:class:`WebBotAuthTransport` is that inner transport, so the retry's signature covers
the ``PAYMENT-SIGNATURE`` header the SDK has just set
(:func:`x402_web_bot_auth_client` builds the pair).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .keys import Payer

try:
    import httpx
    from http_message_signatures import (
        HTTPMessageSigner,
        HTTPSignatureComponentResolver,
        HTTPSignatureKeyResolver,
    )
    from http_message_signatures.algorithms import ED25519
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'tally_x402.webbotauth needs the webbotauth extra: pip install "tally-x402[webbotauth]"'
    ) from e

if TYPE_CHECKING:
    from x402 import x402Client
    from x402.http import x402HTTPClient

__all__ = [
    "DEFAULT_LABEL",
    "DEFAULT_VALIDITY_SECONDS",
    "PAYMENT_SIGNATURE_HEADER",
    "WEB_BOT_AUTH_COMPONENTS",
    "WEB_BOT_AUTH_TAG",
    "WEB_BOT_AUTH_VALIDITY_MAX_SECONDS",
    "WebBotAuthHeaders",
    "WebBotAuthSigner",
    "WebBotAuthTransport",
    "ed25519_public_jwk",
    "jwk_thumbprint",
    "request_authority",
    "sign_web_bot_auth",
    "signature_agent_header",
    "x402_web_bot_auth_client",
]

WEB_BOT_AUTH_COMPONENTS: tuple[str, ...] = ("@authority", "signature-agent", "payment-signature")
"""The components a Tally Web Bot Auth payment signature covers, in this order."""
UNPAID_COMPONENTS: tuple[str, ...] = ("@authority", "signature-agent")
"""What an unpaid request's signature covers (identification only)."""
WEB_BOT_AUTH_TAG = "web-bot-auth"
WEB_BOT_AUTH_VALIDITY_MAX_SECONDS = 300
"""Tally's limit on ``expires - created``."""
DEFAULT_VALIDITY_SECONDS = 60
DEFAULT_LABEL = "sig1"
PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"

# Limits Tally applies to the forwarded values (crates/tally-x402/src/webbotauth.rs).
_AUTHORITY_BYTES_MAX = 270
_SIGNATURE_AGENT_BYTES_MAX = 4096
_PAYMENT_SIGNATURE_BYTES_MAX = 16 * 1024
_NONCE_BYTES_MAX = 256
_LABEL_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz*")
_LABEL_CHARS = _LABEL_FIRST | frozenset("0123456789_-.")

SigningKey = Payer | Ed25519PrivateKey | bytes | str
"""A crawler key: a :class:`Payer`, a ``cryptography`` Ed25519 key, or its 32-byte seed."""


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def ed25519_public_jwk(public_key: bytes) -> dict[str, str]:
    """The public JWK (RFC 8037 ``OKP``) of a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(public_key)}


def jwk_thumbprint(public_key: bytes) -> str:
    """The RFC 7638 thumbprint of an Ed25519 public key: the Web Bot Auth ``keyid``.

    base64url (no padding) of SHA-256 over ``{"crv":"Ed25519","kty":"OKP","x":"…"}``,
    the required members in lexicographic order without whitespace.
    """
    jwk = ed25519_public_jwk(public_key)
    canonical = f'{{"crv":"{jwk["crv"]}","kty":"{jwk["kty"]}","x":"{jwk["x"]}"}}'
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _visible_ascii(name: str, value: str, limit: int) -> None:
    """A single-line field value (visible ASCII, SP, HTAB): nothing can add a line to the base."""
    if not value.strip():
        raise ValueError(f"{name} is empty")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} bytes")
    if not all(c == "\t" or " " <= c <= "~" for c in value):
        raise ValueError(f"{name} must be visible ASCII on one line")


def signature_agent_header(agent: str) -> str:
    """The ``Signature-Agent`` value for an agent URL: an RFC 8941 string, quotes included.

    A value that already starts with a quote is taken as such a string and checked.
    """
    inner = agent[1:-1] if agent.startswith('"') else agent
    if agent.startswith('"') and (len(agent) < 2 or not agent.endswith('"')):
        raise ValueError("a quoted signature agent must end with a quote")
    if not inner or '"' in inner or "\\" in inner or not all(" " <= c <= "~" for c in inner):
        raise ValueError("a signature agent is printable ASCII without quotes or backslashes")
    header = f'"{inner}"'
    _visible_ascii("signature agent", header, _SIGNATURE_AGENT_BYTES_MAX)
    return header


def request_authority(url: httpx.URL | str) -> str:
    """A URL's RFC 9421 ``@authority``: the lowercase host, with its port unless the default."""
    authority = httpx.URL(url).netloc.decode("ascii")
    if not authority:
        raise ValueError(f"{url!s} names no host")
    return authority


def _private_key(key: SigningKey) -> Ed25519PrivateKey:
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, Payer):
        return Ed25519PrivateKey.from_private_bytes(key.seed())
    raw = bytes.fromhex(key) if isinstance(key, str) else key
    if len(raw) != 32:
        raise ValueError("an Ed25519 seed is 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(raw)


@dataclass(frozen=True)
class WebBotAuthHeaders:
    """The three headers of one signed request."""

    signature_agent: str
    signature_input: str
    signature: str

    def as_dict(self) -> dict[str, str]:
        return {
            "Signature-Agent": self.signature_agent,
            "Signature-Input": self.signature_input,
            "Signature": self.signature,
        }


@dataclass
class _Message:
    """The request as ``http-message-signatures`` reads it (``url``, ``method``, ``headers``)."""

    authority: str
    headers: dict[str, str]
    url: str = ""
    method: str = "GET"


class _ComponentResolver(HTTPSignatureComponentResolver):
    """The library's resolver, with ``@authority`` as given (already normalized)."""

    def get_authority(self) -> str:
        authority: str = self.message.authority
        return authority


class _KeyResolver(HTTPSignatureKeyResolver):
    def __init__(self, keyid: str, key: Ed25519PrivateKey) -> None:
        self._keyid = keyid
        self._key = key

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        if key_id != self._keyid:
            raise KeyError(key_id)
        return self._key

    def resolve_public_key(self, key_id: str) -> Any:
        return self.resolve_private_key(key_id).public_key()


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


class WebBotAuthSigner:
    """A crawler's Web Bot Auth identity: its Ed25519 key and its signature agent.

    ``signature_agent`` is a URL such as ``https://crawler.example`` (or the quoted
    string itself). ``validity_seconds`` is ``expires - created`` (1..=300), ``clock``
    the time source in Unix seconds.
    """

    def __init__(
        self,
        key: SigningKey,
        signature_agent: str,
        *,
        validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
        label: str = DEFAULT_LABEL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= validity_seconds <= WEB_BOT_AUTH_VALIDITY_MAX_SECONDS:
            raise ValueError(f"validity_seconds must be 1..={WEB_BOT_AUTH_VALIDITY_MAX_SECONDS}")
        if not label or label[0] not in _LABEL_FIRST or not set(label) <= _LABEL_CHARS:
            raise ValueError("a signature label is an RFC 8941 key (lowercase, digits, _-.*)")
        self._key = _private_key(key)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.keyid = jwk_thumbprint(self.public_key)
        self.signature_agent = signature_agent_header(signature_agent)
        self.validity_seconds = validity_seconds
        self.label = label
        self.clock = clock
        self._signer = HTTPMessageSigner(
            signature_algorithm=ED25519,
            key_resolver=_KeyResolver(self.keyid, self._key),
            component_resolver_class=_ComponentResolver,
        )

    def sign(
        self,
        authority: str,
        payment_signature: str | None,
        *,
        created: int | None = None,
        expires: int | None = None,
        nonce: str | None = None,
    ) -> WebBotAuthHeaders:
        """Signs one request to ``authority`` carrying ``payment_signature`` (verbatim).

        With ``payment_signature=None`` the signature covers ``@authority`` and
        ``signature-agent`` only: it identifies the crawler but pays nothing.
        ``created`` defaults to now, ``expires`` to ``created + validity_seconds``,
        ``nonce`` to 32 fresh random bytes (base64url); a signed request is one payment.
        """
        _visible_ascii("authority", authority, _AUTHORITY_BYTES_MAX)
        if authority != authority.lower() or " " in authority or "/" in authority:
            raise ValueError("an authority is a lowercase host[:port]")
        headers = {"signature-agent": self.signature_agent}
        components = UNPAID_COMPONENTS
        if payment_signature is not None:
            _visible_ascii("PAYMENT-SIGNATURE", payment_signature, _PAYMENT_SIGNATURE_BYTES_MAX)
            headers["payment-signature"] = payment_signature
            components = WEB_BOT_AUTH_COMPONENTS
        if created is None:
            created = int(self.clock())
        if expires is None:
            expires = created + self.validity_seconds
        if not 0 < expires - created <= WEB_BOT_AUTH_VALIDITY_MAX_SECONDS:
            raise ValueError(
                f"expires must be 1..={WEB_BOT_AUTH_VALIDITY_MAX_SECONDS} s after created"
            )
        if nonce is None:
            nonce = _b64url(secrets.token_bytes(32))
        _visible_ascii("nonce", nonce, _NONCE_BYTES_MAX)
        if '"' in nonce or "\\" in nonce:
            raise ValueError("a nonce has no quotes or backslashes")
        message = _Message(authority=authority, headers=headers)
        self._signer.sign(
            message,
            key_id=self.keyid,
            created=_utc(created),
            expires=_utc(expires),
            nonce=nonce,
            label=self.label,
            tag=WEB_BOT_AUTH_TAG,
            include_alg=True,
            covered_component_ids=components,
        )
        return WebBotAuthHeaders(
            signature_agent=self.signature_agent,
            signature_input=message.headers["Signature-Input"],
            signature=message.headers["Signature"],
        )

    def sign_request(self, request: httpx.Request, *, paid_only: bool = True) -> bool:
        """Adds the three headers to an httpx request; returns whether it signed.

        A request without ``PAYMENT-SIGNATURE`` is signed (identification only) unless
        ``paid_only``.
        """
        payment = request.headers.get(PAYMENT_SIGNATURE_HEADER)
        if payment is None and paid_only:
            return False
        signed = self.sign(request_authority(request.url), payment)
        for name, value in signed.as_dict().items():
            request.headers[name] = value
        return True


def sign_web_bot_auth(
    authority: str,
    signature_agent: str,
    payment_signature: str,
    key: SigningKey,
    *,
    created: int | None = None,
    expires: int | None = None,
    nonce: str | None = None,
    label: str = DEFAULT_LABEL,
) -> WebBotAuthHeaders:
    """The Web Bot Auth headers of one paid request.

    ``authority`` is the request's ``@authority`` (:func:`request_authority` of its URL),
    ``signature_agent`` the agent URL (or its quoted form), ``payment_signature`` the
    ``PAYMENT-SIGNATURE`` header value exactly as sent. ``created`` defaults to now and
    ``expires`` to 60 s later; ``expires - created`` may be at most 300 s.
    """
    signer = WebBotAuthSigner(key, signature_agent, label=label)
    return signer.sign(authority, payment_signature, created=created, expires=expires, nonce=nonce)


class WebBotAuthTransport(httpx.AsyncBaseTransport):
    """An httpx transport that signs each paid request (one with ``PAYMENT-SIGNATURE``).

    Give it to the SDK as the inner transport, so the SDK's paid retry goes through it:
    ``x402AsyncTransport(client, WebBotAuthTransport(signer))``. With
    ``sign_unpaid=True`` requests without a payment are signed too, covering
    ``@authority`` and ``signature-agent`` only.
    """

    def __init__(
        self,
        signer: WebBotAuthSigner,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        sign_unpaid: bool = False,
    ) -> None:
        self.signer = signer
        self.sign_unpaid = sign_unpaid
        self._transport = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.signer.sign_request(request, paid_only=not self.sign_unpaid)
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._transport.aclose()


def x402_web_bot_auth_client(
    x402_client: x402Client | x402HTTPClient,
    signer: WebBotAuthSigner,
    *,
    sign_unpaid: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    **httpx_kwargs: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that pays 402s with the SDK and signs the paid retry.

    The SDK's ``x402AsyncTransport`` outside, :class:`WebBotAuthTransport` inside
    (around ``transport``, by default httpx's own), so the signature covers the
    ``PAYMENT-SIGNATURE`` the SDK sets. Other keyword arguments go to ``httpx.AsyncClient``.
    """
    from x402.http.clients.httpx import x402AsyncTransport

    inner = WebBotAuthTransport(signer, transport, sign_unpaid=sign_unpaid)
    return httpx.AsyncClient(transport=x402AsyncTransport(x402_client, inner), **httpx_kwargs)
