#!/usr/bin/env python3
"""Check a Tally receipt (`tally receipt`), independently of the Rust code.

Written from docs/iou-format.md (sections 2, 6, 12 and 13), RFC 8032 and
RFC 9162 alone: it reads the receipt JSON on stdin and checks that the IOU's
payer signed it.

- tally-iou-v1: the signature covers the IOU's signing bytes.
- tally-batch-v1: the IOU's leaf hash, folded with the inclusion proof
  (RFC 9162, section 2.1.3.2), gives the root in the 88-byte batch statement,
  the statement names the IOU's payer key, and the signature covers the
  statement.

The signature is checked with the engine's own rule (docs/iou-format.md,
section 6), the *cofactored* Ed25519 equation

    [8]([s]B - [k]A - R) = 0,   k = SHA-512(R || A || M) mod L,   s < L,

with R and A decoded as RFC 8032 (section 5.1.3) says. Why cofactored: the
engine verifies batches of signatures as one cofactored linear combination,
so the cofactored equation is the only rule whose verdict cannot depend on
what else shares a batch, and it is the rule by which the engine accepted
(and stored) the IOU. The usual library verify (OpenSSL, and the
`cryptography` package on top of it) is cofactorless, [s]B = R + [k]A, and
refuses signatures whose R has a small-order component: the engine accepts
those, since only the key's holder can make them, so a cofactorless checker
would call a genuine receipt bad. Every RFC 8032 signature satisfies both
equations. The key must also be one the engine registers: not of small order
(anyone could sign under it) and without a small-order component.

The curve arithmetic is written out below from RFC 8032 (sections 5.1.1 to
5.1.4), in pure Python: a receipt has one signature, so speed does not
matter, and the checker needs nothing beyond the standard library.

Prints "OK <format>" and exits 0, or prints what failed and exits 1.

    tally receipt --payer-key HEX --nonce HEX | python3 scripts/interop/verify_receipt.py
"""

import hashlib
import json
import sys

IOU_TAG = b"tally-iou-v1"
BATCH_TAG = b"tally-bat-v1"
STATEMENT_LEN = 88
PROOF_HASHES_MAX = 16

# --- Edwards25519 (RFC 8032, section 5.1) ------------------------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # order of B
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)  # a square root of -1 mod P

# Points in extended homogeneous coordinates (X, Y, Z, T): x = X/Z, y = Y/Z,
# x*y = T/Z (section 5.1.4).
IDENTITY = (0, 1, 1, 0)
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202
_BY = 46316835694926478169428394003475163141307993866256225615783033603165251855960
BASE = (_BX, _BY, 1, _BX * _BY % P)


def point_add(p1, p2):
    """Section 5.1.4 (complete for this curve: it also doubles)."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_double(p1):
    """Section 5.1.4, doubling."""
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_neg(p1):
    x1, y1, z1, t1 = p1
    return (-x1 % P, y1, z1, -t1 % P)


def scalar_mul(n, p1):
    """[n]p1 by double-and-add (variable time: every input here is public)."""
    result = IDENTITY
    addend = p1
    while n > 0:
        if n & 1:
            result = point_add(result, addend)
        addend = point_double(addend)
        n >>= 1
    return result


def mul_by_cofactor(p1):
    """[8]p1: three doublings."""
    return point_double(point_double(point_double(p1)))


def is_identity(p1):
    x1, y1, z1, _ = p1
    return x1 % P == 0 and (y1 - z1) % P == 0


def decode_point(encoded):
    """Section 5.1.3; None when the 32 bytes are not a point's encoding."""
    if len(encoded) != 32:
        return None
    value = int.from_bytes(encoded, "little")
    x_0 = value >> 255
    y = value & ((1 << 255) - 1)
    if y >= P:  # a non-canonical y is refused
        return None
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    vxx = v * x * x % P
    if vxx == u:
        pass
    elif vxx == -u % P:
        x = x * SQRT_M1 % P
    else:
        return None
    if x == 0 and x_0 == 1:
        return None
    if x & 1 != x_0:
        x = P - x
    return (x, y, 1, x * y % P)


def verify_cofactored(public_key, message, signature):
    """Tally's validity rule for one signature; returns what failed, or None."""
    if len(signature) != 64:
        return "the signature is not 64 bytes"
    r_bytes, s_bytes = signature[:32], signature[32:]
    s = int.from_bytes(s_bytes, "little")
    if s >= L:
        return "the signature's s is not canonical (s >= L)"
    a = decode_point(public_key)
    if a is None:
        return "the payer key is not a valid point encoding"
    if is_identity(mul_by_cofactor(a)):
        return "the payer key has small order (anyone could sign under it)"
    if not is_identity(scalar_mul(L, a)):
        return "the payer key has a small-order component (Tally registers no such key)"
    r = decode_point(r_bytes)
    if r is None:
        return "the signature's R is not a valid point encoding"
    k = int.from_bytes(hashlib.sha512(r_bytes + public_key + message).digest(), "little") % L
    # [s]B - [k]A - R, then clear the cofactor.
    difference = point_add(scalar_mul(s, BASE), point_neg(point_add(scalar_mul(k, a), r)))
    if not is_identity(mul_by_cofactor(difference)):
        return "the signature does not verify"
    return None


# --- Inclusion proofs (RFC 9162) ----------------------------------------------


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


def check(receipt):
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
    problem = verify_cofactored(payer_key, message, signature)
    if problem is not None:
        fail(problem)
    print("OK " + fmt)


def main():
    try:
        receipt = json.load(sys.stdin)
        check(receipt)
    except (KeyError, TypeError, ValueError) as e:
        fail(f"the receipt is malformed: {e!r}")


if __name__ == "__main__":
    main()
