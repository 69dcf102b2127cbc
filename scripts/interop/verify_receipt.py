#!/usr/bin/env python3
"""Check a Tally receipt (`tally receipt`), independently of the Rust code.

Written from docs/iou-format.md (sections 2, 12 and 13) and RFC 9162 alone:
it reads the receipt JSON on stdin and checks that the IOU's payer signed it.

- tally-iou-v1: the signature covers the IOU's signing bytes.
- tally-batch-v1: the IOU's leaf hash, folded with the inclusion proof
  (RFC 9162, section 2.1.3.2), gives the root in the 88-byte batch statement,
  the statement names the IOU's payer key, and the signature covers the
  statement.

Prints "OK <format>" and exits 0, or prints what failed and exits 1.

    tally receipt --payer-key HEX --nonce HEX | python3 scripts/interop/verify_receipt.py

Needs the PyPI package `cryptography` (pip install cryptography).
"""

import hashlib
import json
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - depends on the machine
    sys.stderr.write("verify_receipt.py needs the Python package 'cryptography': pip install cryptography\n")
    sys.exit(3)

IOU_TAG = b"tally-iou-v1"
BATCH_TAG = b"tally-bat-v1"
STATEMENT_LEN = 88
PROOF_HASHES_MAX = 16


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162, section 2.1.3.2, step by step."""
    if index >= size or len(proof) > PROOF_HASHES_MAX:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 == 1 or fn == sn:
            r = node_hash(p, r)
            if fn & 1 == 0:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def fail(reason):
    print("FAIL " + reason)
    sys.exit(1)


def main():
    receipt = json.load(sys.stdin)
    iou = bytes.fromhex(receipt["iou_signing_bytes"])
    signature = bytes.fromhex(receipt["signature"])
    if not iou.startswith(IOU_TAG) or len(iou) < 84:
        fail("the IOU does not start with the tally-iou-v1 domain tag")
    payer_key = iou[12:44]
    fmt = receipt["evidence_format"]
    if fmt == "tally-batch-v1":
        statement = bytes.fromhex(receipt["batch_statement"])
        if len(statement) != STATEMENT_LEN or not statement.startswith(BATCH_TAG):
            fail("the batch statement is malformed")
        if statement[12:44] != payer_key:
            fail("the batch statement names another key than the IOU")
        count = int.from_bytes(statement[52:56], "big")
        root = statement[56:88]
        proof = [bytes.fromhex(h) for h in receipt["inclusion_proof"]]
        if not verify_inclusion(leaf_hash(iou), receipt["leaf_index"], count, proof, root):
            fail("the inclusion proof does not lead to the signed root")
        message = statement
    elif fmt == "tally-iou-v1":
        message = bytes.fromhex(receipt["signed_message"])
        if message != iou:
            fail("a tally-iou-v1 signature must cover the IOU's own bytes")
    else:
        fail("this checker knows tally-iou-v1 and tally-batch-v1, not " + fmt)
    try:
        Ed25519PublicKey.from_public_bytes(payer_key).verify(signature, message)
    except InvalidSignature:
        fail("the signature does not verify")
    print("OK " + fmt)


if __name__ == "__main__":
    main()
