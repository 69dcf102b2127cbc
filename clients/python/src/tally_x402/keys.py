"""A payer's Ed25519 key: signs IOUs and batch statements (RFC 8032, pure Ed25519)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .batch import SignedBatch, batch_statement, leaf_hash, merkle_root
from .iou import Iou, IouFieldError, SignedIou

__all__ = ["DEFAULT_VALIDITY_SECONDS", "Payer"]

DEFAULT_VALIDITY_SECONDS = 300
"""``expires_at - issued_at`` for one-off requests, as the format document suggests."""
VALIDITY_MAX_SECONDS = 86_400
"""A deployment's default ``validity_max_s``: one day."""


class Payer:
    """A payer key. ``Payer.generate()``, or ``Payer.from_seed(seed)`` with the 32-byte seed.

    The public key (:attr:`public_key`) is what an administrator registers
    (``tally payer register ID --key HEX``).
    """

    __slots__ = ("_key", "_public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public_key = key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> Payer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes | str) -> Payer:
        """From the 32-byte secret seed (raw bytes or 64 hex digits).

        A 64-byte libsodium-style secret key is ``seed || public key``: pass its first half.
        """
        raw = bytes.fromhex(seed) if isinstance(seed, str) else seed
        if len(raw) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def public_key_hex(self) -> str:
        return self._public_key.hex()

    def seed(self) -> bytes:
        """The 32-byte secret seed. Keep it secret."""
        return self._key.private_bytes_raw()

    def sign_message(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def sign(self, iou: Iou) -> SignedIou:
        """Signs an IOU that names this key."""
        if iou.payer_key != self._public_key:
            raise IouFieldError("the IOU names another payer key")
        return SignedIou(iou=iou, signature=self._key.sign(iou.signing_bytes()))

    def new_iou(
        self,
        *,
        network: str,
        payee: str,
        asset: str,
        amount: int,
        resource: str = "",
        nonce: bytes | None = None,
        issued_at: int | None = None,
        expires_at: int | None = None,
        validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
    ) -> Iou:
        """An unsigned IOU from this key: a fresh random nonce and ``now .. now + validity``."""
        if issued_at is None:
            issued_at = int(time.time())
        if expires_at is None:
            if not 1 <= validity_seconds <= VALIDITY_MAX_SECONDS:
                raise IouFieldError(f"validity must be 1..={VALIDITY_MAX_SECONDS} seconds")
            expires_at = issued_at + validity_seconds
        return Iou(
            network=network,
            payer_key=self._public_key,
            payee=payee,
            asset=asset,
            amount=amount,
            nonce=os.urandom(16) if nonce is None else nonce,
            issued_at=issued_at,
            expires_at=expires_at,
            resource=resource,
        )

    def iou(
        self,
        *,
        network: str,
        payee: str,
        asset: str,
        amount: int,
        resource: str = "",
        nonce: bytes | None = None,
        issued_at: int | None = None,
        expires_at: int | None = None,
        validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
    ) -> SignedIou:
        """Builds and signs one IOU (see :meth:`new_iou`)."""
        return self.sign(
            self.new_iou(
                network=network,
                payee=payee,
                asset=asset,
                amount=amount,
                resource=resource,
                nonce=nonce,
                issued_at=issued_at,
                expires_at=expires_at,
                validity_seconds=validity_seconds,
            )
        )

    def sign_batch(self, ious: Iterable[Iou], batch_seq: int) -> SignedBatch:
        """One signature over the batch statement of ``ious`` (in this order).

        ``(key, batch_seq)`` names one batch forever: never reuse a batch_seq.
        """
        members = tuple(ious)
        if not members:
            raise IouFieldError("a signed batch holds at least one IOU")
        for iou in members:
            if iou.payer_key != self._public_key:
                raise IouFieldError("every IOU of a signed batch names the signing key")
        root = merkle_root([leaf_hash(iou.signing_bytes()) for iou in members])
        statement = batch_statement(self._public_key, batch_seq, len(members), root)
        return SignedBatch(
            batch_seq=batch_seq, ious=members, root=root, signature=self._key.sign(statement)
        )

    def __repr__(self) -> str:
        return f"Payer(public_key={self.public_key_hex})"
