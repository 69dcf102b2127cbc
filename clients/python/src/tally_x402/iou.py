"""The Tally IOU format, ``tally-iou-v1`` (docs/iou-format.md).

An IOU's *signing bytes* are a fixed binary encoding: all integers unsigned
big-endian, every length prefix a byte count, no padding. The payer signs
them with plain Ed25519 (RFC 8032). Everything here is written from the
document; its test vectors are pinned in ``tests/test_vectors.py``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DOMAIN_TAG",
    "FORMAT",
    "LOG_DOMAIN_TAG_V1",
    "LOG_DOMAIN_TAG_V2",
    "RESOURCE_MAX_BYTES",
    "U64_MAX",
    "Iou",
    "IouFieldError",
    "SignedIou",
    "commitment_id",
    "parse_commitment_id",
    "payment_id_nonce",
    "record_hash",
    "validate_payment_id",
]

DOMAIN_TAG = b"tally-iou-v1"
"""The 12-byte domain tag that starts every IOU's signing bytes."""
FORMAT = "tally-iou-v1"
"""``payload.format`` of an x402 payment carrying a Tally IOU."""
LOG_DOMAIN_TAG_V1 = b"tally-log-v1"
LOG_DOMAIN_TAG_V2 = b"tally-log-v2"
PAYMENT_ID_DOMAIN_TAG = b"tally-payment-id-v1"
U64_MAX = 2**64 - 1
RESOURCE_MAX_BYTES = 1024
NONCE_LEN = 16
KEY_LEN = 32
SIGNATURE_LEN = 64

_NETWORK_RE = re.compile(r"[A-Za-z0-9:._-]{1,64}")
_ASSET_RE = re.compile(r"[A-Z0-9]{1,12}")
_PAYEE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_PAYMENT_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_CANONICAL_AMOUNT_RE = re.compile(r"0|[1-9][0-9]*")


class IouFieldError(ValueError):
    """A field is outside what ``tally-iou-v1`` allows (section 3)."""


def _check_u64(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise IouFieldError(f"{name} must be an integer in 0..=2^64-1, got {value!r}")
    return value


def _check_bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise IouFieldError(f"{name} must be {length} bytes, got {value!r}")
    return value


def _check_text(name: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise IouFieldError(f"{name} must be {rule}, got {value!r}")
    return value


def check_network(value: object) -> str:
    """``value`` if it is a valid network id (1-64 of ``A-Z a-z 0-9 : . _ -``)."""
    return _check_text("network", value, _NETWORK_RE, "1 to 64 characters of A-Z a-z 0-9 : . _ -")


def check_asset(value: object) -> str:
    """``value`` if it is a valid asset code (1-12 of ``A-Z 0-9``)."""
    return _check_text("asset", value, _ASSET_RE, "1 to 12 characters of A-Z 0-9")


def check_payee(value: object) -> str:
    """``value`` if it is a valid payee id (1-64 of ``A-Z a-z 0-9 . _ -``)."""
    return _check_text("payee", value, _PAYEE_RE, "1 to 64 characters of A-Z a-z 0-9 . _ -")


def _encode_resource(value: object) -> bytes:
    if not isinstance(value, str):
        raise IouFieldError(f"resource must be a string, got {value!r}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise IouFieldError(f"resource is not encodable as UTF-8: {error}") from None
    if len(raw) > RESOURCE_MAX_BYTES:
        raise IouFieldError(f"resource is {len(raw)} bytes once UTF-8 encoded; at most 1024")
    return raw


def parse_amount(text: object) -> int:
    """A canonical decimal amount string (digits, no sign, no leading zero) as an int."""
    if not isinstance(text, str) or _CANONICAL_AMOUNT_RE.fullmatch(text) is None:
        raise IouFieldError(f"amount must be a canonical decimal string, got {text!r}")
    return _check_u64("amount", int(text))


@dataclass(frozen=True, slots=True)
class Iou:
    """One IOU's fields (section 3). Construction checks every field."""

    network: str
    payer_key: bytes
    payee: str
    asset: str
    amount: int
    nonce: bytes
    issued_at: int
    expires_at: int
    resource: str = ""

    def __post_init__(self) -> None:
        check_network(self.network)
        _check_bytes("payer_key", self.payer_key, KEY_LEN)
        check_payee(self.payee)
        check_asset(self.asset)
        if _check_u64("amount", self.amount) == 0:
            raise IouFieldError("amount must be at least 1 (0 is refused: invalid_amount)")
        _check_bytes("nonce", self.nonce, NONCE_LEN)
        _check_u64("issued_at", self.issued_at)
        _check_u64("expires_at", self.expires_at)
        _encode_resource(self.resource)

    def signing_bytes(self) -> bytes:
        """The canonical bytes the payer signs (section 2)."""
        network = self.network.encode("ascii")
        asset = self.asset.encode("ascii")
        payee = self.payee.encode("ascii")
        resource = self.resource.encode("utf-8")
        return b"".join(
            (
                DOMAIN_TAG,
                self.payer_key,
                self.nonce,
                self.amount.to_bytes(8, "big"),
                self.issued_at.to_bytes(8, "big"),
                self.expires_at.to_bytes(8, "big"),
                len(network).to_bytes(1, "big"),
                network,
                len(asset).to_bytes(1, "big"),
                asset,
                len(payee).to_bytes(1, "big"),
                payee,
                len(resource).to_bytes(2, "big"),
                resource,
            )
        )

    @classmethod
    def from_signing_bytes(cls, data: bytes) -> Iou:
        """Parses signing bytes back into fields (the inverse of :meth:`signing_bytes`)."""
        if len(data) < 92 or data[:12] != DOMAIN_TAG:
            raise IouFieldError("not tally-iou-v1 signing bytes")
        payer_key, nonce = data[12:44], data[44:60]
        amount = int.from_bytes(data[60:68], "big")
        issued_at = int.from_bytes(data[68:76], "big")
        expires_at = int.from_bytes(data[76:84], "big")
        offset = 84
        texts: list[str] = []
        try:
            for _ in range(3):
                length = data[offset]
                texts.append(data[offset + 1 : offset + 1 + length].decode("ascii"))
                offset += 1 + length
            length = int.from_bytes(data[offset : offset + 2], "big")
            resource = data[offset + 2 : offset + 2 + length].decode("utf-8")
        except (IndexError, UnicodeDecodeError):
            raise IouFieldError("malformed signing bytes") from None
        if offset + 2 + length != len(data):
            raise IouFieldError("signing bytes have the wrong length")
        network, asset, payee = texts
        return cls(
            network=network,
            payer_key=payer_key,
            payee=payee,
            asset=asset,
            amount=amount,
            nonce=nonce,
            issued_at=issued_at,
            expires_at=expires_at,
            resource=resource,
        )

    def to_json(self) -> dict[str, Any]:
        """The IOU as x402 JSON (docs/x402-binding.md section 1): hex bytes, decimal amount."""
        return {
            "network": self.network,
            "payerKey": self.payer_key.hex(),
            "payee": self.payee,
            "asset": self.asset,
            "amount": str(self.amount),
            "nonce": self.nonce.hex(),
            "issuedAt": self.issued_at,
            "expiresAt": self.expires_at,
            "resource": self.resource,
        }

    @classmethod
    def from_json(cls, value: object) -> Iou:
        if not isinstance(value, dict):
            raise IouFieldError("iou must be a JSON object")
        expected = {
            "network",
            "payerKey",
            "payee",
            "asset",
            "amount",
            "nonce",
            "issuedAt",
            "expiresAt",
            "resource",
        }
        if set(value) != expected:
            raise IouFieldError(f"iou must have exactly the fields {sorted(expected)}")
        try:
            payer_key = bytes.fromhex(value["payerKey"])
            nonce = bytes.fromhex(value["nonce"])
        except (TypeError, ValueError):
            raise IouFieldError("payerKey and nonce must be hex") from None
        return cls(
            network=value["network"],
            payer_key=payer_key,
            payee=value["payee"],
            asset=value["asset"],
            amount=parse_amount(value["amount"]),
            nonce=nonce,
            issued_at=value["issuedAt"],
            expires_at=value["expiresAt"],
            resource=value["resource"],
        )


@dataclass(frozen=True, slots=True)
class SignedIou:
    """An IOU and the payer's 64-byte Ed25519 signature over its signing bytes."""

    iou: Iou
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("signature", self.signature, SIGNATURE_LEN)

    def to_x402_payload(self) -> dict[str, Any]:
        """``paymentPayload.payload`` of an x402 ``batch-settlement`` payment on Tally."""
        return {"format": FORMAT, "iou": self.iou.to_json(), "signature": self.signature.hex()}

    @classmethod
    def from_x402_payload(cls, payload: object) -> SignedIou:
        if not isinstance(payload, dict) or set(payload) != {"format", "iou", "signature"}:
            raise IouFieldError("payload must be {format, iou, signature}")
        if payload["format"] != FORMAT:
            raise IouFieldError(f"payload format must be {FORMAT!r}")
        try:
            signature = bytes.fromhex(payload["signature"])
        except (TypeError, ValueError):
            raise IouFieldError("signature must be hex") from None
        return cls(iou=Iou.from_json(payload["iou"]), signature=signature)

    def verify(self) -> bool:
        """Whether the signature verifies under the IOU's payer key (RFC 8032).

        This is the library check most signers want; the engine's rule is the
        cofactored one (section 6), which every RFC 8032 signature satisfies.
        """
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = Ed25519PublicKey.from_public_bytes(self.iou.payer_key)
            key.verify(self.signature, self.iou.signing_bytes())
        except (InvalidSignature, ValueError):
            return False
        return True


def validate_payment_id(payment_id: object) -> str:
    """``payment_id`` if it is a valid x402 payment identifier (16-128 of ``A-Z a-z 0-9 - _``)."""
    if not isinstance(payment_id, str) or _PAYMENT_ID_RE.fullmatch(payment_id) is None:
        raise IouFieldError(
            f"a payment identifier is 16 to 128 characters of A-Z a-z 0-9 - _, got {payment_id!r}"
        )
    return payment_id


def payment_id_nonce(payment_id: str) -> bytes:
    """The IOU nonce a payment identifier stands for (docs/x402-binding.md section 4).

    The first 16 bytes of ``SHA-256("tally-payment-id-v1" || id)``: the
    facilitator maps the identifier onto its replay index this way.
    """
    raw = validate_payment_id(payment_id).encode("ascii")
    return hashlib.sha256(PAYMENT_ID_DOMAIN_TAG + raw).digest()[:NONCE_LEN]


def record_hash(
    *,
    prev_hash: bytes,
    seq: int,
    epoch: int,
    accepted_at_ms: int,
    signature: bytes,
    evidence: bytes,
    charge: int | None,
) -> bytes:
    """A log record's chain hash (section 8).

    ``charge=None`` computes a format-1 record (``tally-log-v1``, no charge);
    an integer computes format 2 (``tally-log-v2``, the charge hashed).
    """
    _check_bytes("prev_hash", prev_hash, 32)
    parts = [
        LOG_DOMAIN_TAG_V1 if charge is None else LOG_DOMAIN_TAG_V2,
        prev_hash,
        _check_u64("seq", seq).to_bytes(8, "big"),
        _check_u64("epoch", epoch).to_bytes(8, "big"),
        _check_u64("accepted_at_ms", accepted_at_ms).to_bytes(8, "big"),
    ]
    if charge is not None:
        parts.append(_check_u64("charge", charge).to_bytes(8, "big"))
    parts += [_check_bytes("signature", signature, SIGNATURE_LEN), evidence]
    return hashlib.sha256(b"".join(parts)).digest()


def commitment_id(seq: int, record_hash: bytes) -> str:
    """``<seq>:<record_hash hex>``, as x402 ``transaction`` and gRPC report it."""
    return f"{_check_u64('seq', seq)}:{_check_bytes('record_hash', record_hash, 32).hex()}"


def parse_commitment_id(text: str) -> tuple[int, bytes]:
    """``(seq, record_hash)`` from ``<seq>:<64 hex>``."""
    seq_text, sep, hash_hex = text.partition(":")
    if not sep or _CANONICAL_AMOUNT_RE.fullmatch(seq_text) is None or len(hash_hex) != 64:
        raise ValueError(f"not a commitment id: {text!r}")
    if hash_hex != hash_hex.lower():
        raise ValueError(f"not a commitment id (upper-case hex): {text!r}")
    return int(seq_text), bytes.fromhex(hash_hex)
