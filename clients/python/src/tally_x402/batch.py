"""Batch-signed commitments (docs/iou-format.md, section 13).

A payer may sign one 88-byte *batch statement* instead of each IOU:

    "tally-bat-v1" (12) || payer key (32) || batch_seq (u64) || count (u32) || root (32)

where ``root`` is the RFC 9162 Merkle tree hash over the IOUs' signing bytes,
in batch order. The IOUs then travel with empty signatures
(``SubmitSignedBatch`` / ``StreamSignedBatches``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .iou import U64_MAX, Iou, IouFieldError

__all__ = [
    "BATCH_DOMAIN_TAG",
    "STATEMENT_COUNT_MAX",
    "SignedBatch",
    "batch_statement",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "verify_inclusion",
]

BATCH_DOMAIN_TAG = b"tally-bat-v1"
STATEMENT_COUNT_MAX = 65_536
"""The statement format's own bound; a server's batch limit (4,096 by default) is lower."""


def leaf_hash(signing_bytes: bytes) -> bytes:
    """``SHA-256(0x00 || signing bytes)``."""
    return hashlib.sha256(b"\x00" + signing_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _tree_hash(leaves: Sequence[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return node_hash(_tree_hash(leaves[:k]), _tree_hash(leaves[k:]))


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 (section 2.1.1) Merkle tree hash over already-hashed leaves."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    return _tree_hash(leaves)


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 inclusion proof (``PATH``) of leaf ``index``: sibling hashes, leaf side first."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf index {index} outside a tree of {len(leaves)}")
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_proof(leaves[:k], index), _tree_hash(leaves[k:])]
    return [*inclusion_proof(leaves[k:], index - k), _tree_hash(leaves[:k])]


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: whether ``proof`` places ``leaf`` at ``index`` under ``root``."""
    if not 0 <= index < tree_size:
        return False
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def batch_statement(payer_key: bytes, batch_seq: int, count: int, root: bytes) -> bytes:
    """The 88-byte statement a payer signs for a batch."""
    if len(payer_key) != 32 or len(root) != 32:
        raise IouFieldError("payer_key and root must be 32 bytes")
    if not 0 <= batch_seq <= U64_MAX:
        raise IouFieldError(f"batch_seq must be a u64, got {batch_seq}")
    if not 1 <= count <= STATEMENT_COUNT_MAX:
        raise IouFieldError(f"a signed batch holds 1 to {STATEMENT_COUNT_MAX} IOUs, got {count}")
    return (
        BATCH_DOMAIN_TAG
        + payer_key
        + batch_seq.to_bytes(8, "big")
        + count.to_bytes(4, "big")
        + root
    )


@dataclass(frozen=True, slots=True)
class SignedBatch:
    """A batch-signed commitment: IOUs of one payer key under one signature."""

    batch_seq: int
    ious: tuple[Iou, ...]
    root: bytes
    signature: bytes

    @property
    def payer_key(self) -> bytes:
        return self.ious[0].payer_key

    def statement(self) -> bytes:
        return batch_statement(self.payer_key, self.batch_seq, len(self.ious), self.root)

    def leaves(self) -> list[bytes]:
        return [leaf_hash(iou.signing_bytes()) for iou in self.ious]

    def proof(self, index: int) -> list[bytes]:
        """The inclusion proof of IOU ``index`` (what ``GetReceipt`` returns for it)."""
        return inclusion_proof(self.leaves(), index)
