#!/usr/bin/env python3
"""Build and sign a Tally IOU, independently of the Rust code.

Written from docs/iou-format.md alone, so that it checks the document as much
as the engine: if this script and tally-core ever disagree, one of them does
not follow the document.

Sign one IOU (prints one JSON object with payer_key, signing_bytes and
signature, all hex):

    python3 scripts/interop/sign_iou.py --seed HEX --network tally:test \
        --payee pub-1 --asset USD --amount 1 --nonce HEX \
        --issued-at 1700000000 --expires-at 1700000060 [--resource STR]

A value that starts with "-" (payee and network may) must be given as
--payee=-value, or the command line parser takes it for an option.

Check the document's test vectors (exit status 1 on any mismatch):

    python3 scripts/interop/sign_iou.py --self-test

Needs the PyPI package `cryptography` (pip install cryptography).
"""

import argparse
import hashlib
import json
import os
import re
import sys

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
except ImportError:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        "sign_iou.py needs the Python package 'cryptography': pip install cryptography\n"
    )
    sys.exit(3)

# --- The format (docs/iou-format.md, sections 2 and 3) ----------------------

DOMAIN_TAG = b"tally-iou-v1"
LOG_DOMAIN_TAG_V1 = b"tally-log-v1"  # format-1 records: no charge field
LOG_DOMAIN_TAG = b"tally-log-v2"  # format 2 on: the charge is hashed
U64_MAX = 2**64 - 1

NETWORK_RE = re.compile(rb"[A-Za-z0-9:._-]{1,64}")
ASSET_RE = re.compile(rb"[A-Z0-9]{1,12}")
PAYEE_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")
RESOURCE_MAX = 1024


class IouFieldError(ValueError):
    """A field is outside what the format allows."""


def _u64(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U64_MAX:
        raise IouFieldError(f"{name} must be an integer in 0..=2^64-1, got {value!r}")
    return value.to_bytes(8, "big")


def _short_field(name, value, pattern):
    """A 1-byte length prefix, then the ASCII bytes."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if pattern.fullmatch(raw) is None:
        raise IouFieldError(f"{name} {value!r} is not allowed (see docs/iou-format.md section 3)")
    return bytes([len(raw)]) + raw


def signing_bytes(*, payer_key, nonce, amount, issued_at, expires_at, network, asset, payee, resource):
    """The canonical signing bytes of section 2.

    payer_key and nonce are bytes (32 and 16); amount, issued_at and
    expires_at are ints; network, asset, payee and resource are str (or the
    UTF-8 bytes of one).
    """
    if len(payer_key) != 32:
        raise IouFieldError("payer_key must be 32 bytes")
    if len(nonce) != 16:
        raise IouFieldError("nonce must be 16 bytes")
    if isinstance(resource, str):
        resource_raw = resource.encode("utf-8")
    else:
        resource_raw = bytes(resource)
        resource_raw.decode("utf-8")  # must be valid UTF-8; raises otherwise
    if len(resource_raw) > RESOURCE_MAX:
        raise IouFieldError(f"resource is {len(resource_raw)} bytes; at most {RESOURCE_MAX}")
    out = bytearray()
    out += DOMAIN_TAG  # offset 0, 12 bytes
    out += payer_key  # offset 12, 32 bytes
    out += nonce  # offset 44, 16 bytes
    out += _u64("amount", amount)  # offset 60
    out += _u64("issued_at", issued_at)  # offset 68
    out += _u64("expires_at", expires_at)  # offset 76
    assert len(out) == 84
    out += _short_field("network", network, NETWORK_RE)
    out += _short_field("asset", asset, ASSET_RE)
    out += _short_field("payee", payee, PAYEE_RE)
    out += len(resource_raw).to_bytes(2, "big")
    out += resource_raw
    return bytes(out)


def sign_iou(seed, **fields):
    """Signs an IOU with a 32-byte Ed25519 seed (RFC 8032, no pre-hash).

    `fields` are those of signing_bytes() except payer_key, which is derived
    from the seed. Returns (payer_key, signing_bytes, signature) as bytes.
    """
    if len(seed) != 32:
        raise IouFieldError("seed must be 32 bytes")
    key = Ed25519PrivateKey.from_private_bytes(seed)
    payer_key = key.public_key().public_bytes_raw()
    message = signing_bytes(payer_key=payer_key, **fields)
    return payer_key, message, key.sign(message)


def record_hash(prev_hash, seq, epoch, accepted_at_ms, signature, message, charge=None):
    """The log record hash of section 8.

    With a charge (what the payee charged, 1..=amount), the format-2 hash;
    without one, the format-1 hash that older ledgers were written with.
    """
    if len(prev_hash) != 32 or len(signature) != 64:
        raise IouFieldError("prev_hash is 32 bytes, signature 64")
    tag = LOG_DOMAIN_TAG_V1 if charge is None else LOG_DOMAIN_TAG
    charge_bytes = b"" if charge is None else _u64("charge", charge)
    return hashlib.sha256(
        tag
        + prev_hash
        + _u64("seq", seq)
        + _u64("epoch", epoch)
        + _u64("accepted_at_ms", accepted_at_ms)
        + charge_bytes
        + signature
        + message
    ).digest()


# --- The document's test vectors (section 10) --------------------------------

VECTORS = [
    {
        "name": "Vector 1: minimal",
        "seed": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "payer_key": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "network": "tally:test",
        "payee": "pub-1",
        "asset": "USD",
        "amount": 1,
        "nonce": "000102030405060708090a0b0c0d0e0f",
        "issued_at": 1700000000,
        "expires_at": 1700000060,
        "resource": "",
        "signing_bytes": "74616c6c792d696f752d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000102030405060708090a0b0c0d0e0f0000000000000001000000006553f100000000006553f13c0a74616c6c793a7465737403555344057075622d310000",
        "signature": "82cd6114d40b9fa1324dc411e8ccce833451a8789f838cb17c53f526883def26f97b18aeb33587282bab8f5f0f5e0f7f46a0300a63dffa77ad33ad9ffb264308",
    },
    {
        "name": "Vector 2: a crawler paying for a page",
        "seed": "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "payer_key": "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "network": "tally:mainnet",
        "payee": "news.example",
        "asset": "USDC",
        "amount": 100,
        "nonce": "8f3a5c1e0b7d4962a1e8c3f05d2b9e47",
        "issued_at": 1735689600,
        "expires_at": 1735689900,
        "resource": "https://news.example/2025/01/01/markets.html?page=2",
        "signing_bytes": "74616c6c792d696f752d76313d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c8f3a5c1e0b7d4962a1e8c3f05d2b9e470000000000000064000000006774858000000000677486ac0d74616c6c793a6d61696e6e657404555344430c6e6577732e6578616d706c65003368747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32",
        "signature": "5a6fe55f63c69df97ae3cf5c132dce60c2981a340a7106fda48fab1db245433aeb1c6551a40b42ebe5b6e000b265d69026112d2adb763da204b2ce0cd3e05c07",
    },
    {
        "name": "Vector 3: edge values",
        "seed": "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "payer_key": "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "network": "tally:staging.eu-west-1:edge_case-network.v1:ABCDEFGHIJKLMNOPQRS",
        "payee": "publisher_with.a-very-long.account-id_that-is-exactly-64-bytes.x",
        "asset": "ABCDEFGHIJ12",
        "amount": 18446744073709551615,
        "nonce": "ffffffffffffffffffffffffffffffff",
        "issued_at": 1767225600,
        "expires_at": 1767312000,
        "resource": "https://\u4f8b\u3048.jp/\u8a18\u4e8b/\U0001f980?q=caf\u00e9",
        "resource_hex": "68747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
        "signing_bytes": "74616c6c792d696f752d7631fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025ffffffffffffffffffffffffffffffffffffffffffffffff000000006955b9000000000069570a804074616c6c793a73746167696e672e65752d776573742d313a656467655f636173652d6e6574776f726b2e76313a4142434445464748494a4b4c4d4e4f505152530c4142434445464748494a3132407075626c69736865725f776974682e612d766572792d6c6f6e672e6163636f756e742d69645f746861742d69732d65786163746c792d36342d62797465732e78002568747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
        "signature": "3260a1b8ec530673accbec841bd146f375f6934ec0b4767d408f40b70fa1c345466b40539758784f516041dcf2ee0643acc5c01b209c969a6eb3dcd333b31609",
    },
]

# Two logs of section 10: the same two IOUs, once in format 1 (no charge) and
# once in format 2 (vector 1 charged its whole amount, vector 2 charged 60).
CHAINS = {
    "format 1": [
        {
            "name": "Format 1, record 1",
            "vector": 0,
            "prev_hash": "0000000000000000000000000000000000000000000000000000000000000000",
            "seq": 1,
            "epoch": 1,
            "accepted_at_ms": 1700000000123,
            "charge": None,
            "record_hash": "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32",
        },
        {
            "name": "Format 1, record 2",
            "vector": 1,
            "prev_hash": "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32",
            "seq": 2,
            "epoch": 1,
            "accepted_at_ms": 1735689601234,
            "charge": None,
            "record_hash": "c8e258fb06e35fcd15070c7ddb7ca6b4e832dc116d7fbd96489ec9813af8e8c8",
        },
    ],
    "format 2": [
        {
            "name": "Format 2, record 1",
            "vector": 0,
            "prev_hash": "0000000000000000000000000000000000000000000000000000000000000000",
            "seq": 1,
            "epoch": 1,
            "accepted_at_ms": 1700000000123,
            "charge": 1,
            "record_hash": "6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9",
        },
        {
            "name": "Format 2, record 2",
            "vector": 1,
            "prev_hash": "6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9",
            "seq": 2,
            "epoch": 1,
            "accepted_at_ms": 1735689601234,
            "charge": 60,
            "record_hash": "29d0f08fabba3d6ad009df01f2d790a74c8041341d2c0ac80b059ea6f10e3cf8",
        },
    ],
}

FIELD_NAMES = ("network", "payee", "asset", "amount", "issued_at", "expires_at", "resource")


def _fields_of(vector):
    fields = {name: vector[name] for name in FIELD_NAMES}
    fields["nonce"] = bytes.fromhex(vector["nonce"])
    return fields


def self_test():
    """Checks every vector; returns the list of failures (empty when all pass)."""
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append(f"{what}: got {got}, want {want}")

    for v in VECTORS:
        payer_key, message, signature = sign_iou(bytes.fromhex(v["seed"]), **_fields_of(v))
        check(f"{v['name']} payer_key", payer_key.hex(), v["payer_key"])
        check(f"{v['name']} signing_bytes", message.hex(), v["signing_bytes"])
        check(f"{v['name']} signature", signature.hex(), v["signature"])
        if "resource_hex" in v:
            check(f"{v['name']} resource_hex", v["resource"].encode("utf-8").hex(), v["resource_hex"])
        # The public key verifies the documented signature too.
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed"])).public_key()
        try:
            key.verify(bytes.fromhex(v["signature"]), bytes.fromhex(v["signing_bytes"]))
        except Exception as e:  # cryptography raises InvalidSignature
            failures.append(f"{v['name']}: documented signature does not verify: {e!r}")

    for chain in CHAINS.values():
        prev = bytes(32)
        for c in chain:
            v = VECTORS[c["vector"]]
            check(f"{c['name']} prev_hash", prev.hex(), c["prev_hash"])
            digest = record_hash(
                prev,
                c["seq"],
                c["epoch"],
                c["accepted_at_ms"],
                bytes.fromhex(v["signature"]),
                bytes.fromhex(v["signing_bytes"]),
                charge=c["charge"],
            )
            check(f"{c['name']} record_hash", digest.hex(), c["record_hash"])
            prev = digest
    # The two formats never share a hash, even for the same content.
    for c1, c2 in zip(CHAINS["format 1"], CHAINS["format 2"]):
        if c1["record_hash"] == c2["record_hash"]:
            failures.append(f"{c1['name']} and {c2['name']} hash alike")

    # Every out-of-range value of section 3 is refused.
    base = _fields_of(VECTORS[1])
    bad = {
        "network": ["", "n" * 65, "tally mainnet", "tally/x", "caf\u00e9"],
        "asset": ["", "usd", "A" * 13, "US-D"],
        "payee": ["", "p" * 65, "news:example", "a b"],
        "resource": ["x" * 1025, "\u00e9" * 513],
        "amount": [-1, 2**64],
        "issued_at": [-1, 2**64],
        "expires_at": [2**64],
        "nonce": [bytes(15), bytes(17)],
    }
    for name, values in bad.items():
        for value in values:
            try:
                signing_bytes(payer_key=bytes(32), **dict(base, **{name: value}))
            except (IouFieldError, UnicodeError):
                continue
            failures.append(f"{name} = {value!r} was not refused")
    # ... and the bounds themselves are allowed.
    for name, value in [("network", "n" * 64), ("payee", "p" * 64), ("asset", "A" * 12),
                        ("resource", "x" * 1024), ("resource", ""), ("amount", 2**64 - 1)]:
        try:
            signing_bytes(payer_key=bytes(32), **dict(base, **{name: value}))
        except (IouFieldError, UnicodeError) as e:
            failures.append(f"{name} = {value[:8] if isinstance(value, str) else value!r}... was refused: {e}")
    return failures


# --- Command line ------------------------------------------------------------


def _hex_bytes(length):
    def parse(text):
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not hex")
        if len(raw) != length:
            raise argparse.ArgumentTypeError(f"expected {length} bytes of hex, got {len(raw)}")
        return raw

    return parse


def _text(value):
    # The exact bytes given on the command line, which must be UTF-8.
    try:
        return os.fsencode(value).decode("utf-8")
    except UnicodeDecodeError:
        raise argparse.ArgumentTypeError("not valid UTF-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build and sign a Tally IOU (docs/iou-format.md).")
    parser.add_argument("--self-test", action="store_true", help="check the document's test vectors and exit")
    parser.add_argument("--seed", type=_hex_bytes(32), help="32-byte Ed25519 secret seed, hex")
    parser.add_argument("--network", type=_text)
    parser.add_argument("--payee", type=_text)
    parser.add_argument("--asset", type=_text)
    parser.add_argument("--amount", type=int, help="smallest units of the asset, 1..=2^64-1")
    parser.add_argument("--nonce", type=_hex_bytes(16), help="16 bytes, hex")
    parser.add_argument("--issued-at", type=int, help="Unix seconds")
    parser.add_argument("--expires-at", type=int, help="Unix seconds, after --issued-at")
    parser.add_argument("--resource", type=_text, default="", help="UTF-8, at most 1024 bytes (default: empty)")
    args = parser.parse_args(argv)

    if args.self_test:
        failures = self_test()
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        if failures:
            return 1
        hashes = sum(len(chain) for chain in CHAINS.values())
        print(f"ok: {len(VECTORS)} IOU vectors, {hashes} record hashes (formats 1 and 2), field bounds")
        return 0

    required = ["seed", "network", "payee", "asset", "amount", "nonce", "issued_at", "expires_at"]
    missing = ["--" + name.replace("_", "-") for name in required if getattr(args, name) is None]
    if missing:
        parser.error("missing " + ", ".join(missing))
    # The format can carry these, but the engine never accepts them.
    if args.amount == 0:
        parser.error("--amount must be at least 1")
    if args.expires_at <= args.issued_at:
        parser.error("--expires-at must be after --issued-at")
    try:
        payer_key, message, signature = sign_iou(
            args.seed,
            network=args.network,
            payee=args.payee,
            asset=args.asset,
            amount=args.amount,
            nonce=args.nonce,
            issued_at=args.issued_at,
            expires_at=args.expires_at,
            resource=args.resource,
        )
    except IouFieldError as e:
        parser.error(str(e))
    print(json.dumps({"payer_key": payer_key.hex(), "signing_bytes": message.hex(), "signature": signature.hex()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
