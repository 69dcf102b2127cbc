"""docs/iou-format.md's test vectors, byte for byte, and the format's field rules."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
from x402.schemas import AssetAmount

from tally_x402 import Iou, IouFieldError, Payer, SignedIou, payment_id_nonce
from tally_x402.assets import AssetScales, parse_money, to_smallest_units
from tally_x402.batch import (
    batch_statement,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_inclusion,
)
from tally_x402.batch_settlement import TallyServerScheme
from tally_x402.iou import commitment_id, parse_amount, record_hash

DOC = Path(__file__).resolve().parents[3] / "docs" / "iou-format.md"

VECTORS = [
    {
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
        "resource_hex": "",
        "signing_bytes": "74616c6c792d696f752d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000102030405060708090a0b0c0d0e0f0000000000000001000000006553f100000000006553f13c0a74616c6c793a7465737403555344057075622d310000",
        "signature": "82cd6114d40b9fa1324dc411e8ccce833451a8789f838cb17c53f526883def26f97b18aeb33587282bab8f5f0f5e0f7f46a0300a63dffa77ad33ad9ffb264308",
    },
    {
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
        "resource_hex": "68747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32",
        "signing_bytes": "74616c6c792d696f752d76313d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c8f3a5c1e0b7d4962a1e8c3f05d2b9e470000000000000064000000006774858000000000677486ac0d74616c6c793a6d61696e6e657404555344430c6e6577732e6578616d706c65003368747470733a2f2f6e6577732e6578616d706c652f323032352f30312f30312f6d61726b6574732e68746d6c3f706167653d32",
        "signature": "5a6fe55f63c69df97ae3cf5c132dce60c2981a340a7106fda48fab1db245433aeb1c6551a40b42ebe5b6e000b265d69026112d2adb763da204b2ce0cd3e05c07",
    },
    {
        "seed": "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "payer_key": "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "network": "tally:staging.eu-west-1:edge_case-network.v1:ABCDEFGHIJKLMNOPQRS",
        "payee": "publisher_with.a-very-long.account-id_that-is-exactly-64-bytes.x",
        "asset": "ABCDEFGHIJ12",
        "amount": 18446744073709551615,
        "nonce": "ffffffffffffffffffffffffffffffff",
        "issued_at": 1767225600,
        "expires_at": 1767312000,
        "resource": "https://例え.jp/記事/🦀?q=café",
        "resource_hex": "68747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
        "signing_bytes": "74616c6c792d696f752d7631fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025ffffffffffffffffffffffffffffffffffffffffffffffff000000006955b9000000000069570a804074616c6c793a73746167696e672e65752d776573742d313a656467655f636173652d6e6574776f726b2e76313a4142434445464748494a4b4c4d4e4f505152530c4142434445464748494a3132407075626c69736865725f776974682e612d766572792d6c6f6e672e6163636f756e742d69645f746861742d69732d65786163746c792d36342d62797465732e78002568747470733a2f2fe4be8be381882e6a702fe8a898e4ba8b2ff09fa6803f713d636166c3a9",
        "signature": "3260a1b8ec530673accbec841bd146f375f6934ec0b4767d408f40b70fa1c345466b40539758784f516041dcf2ee0643acc5c01b209c969a6eb3dcd333b31609",
    },
]

# (format, prev_hash, seq, epoch, accepted_at_ms, charge, vector index, record_hash)
RECORDS = [
    (1, "00" * 32, 1, 1, 1700000000123, None, 0,
     "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32"),
    (1, "4b8e2714f67428053267db73f0e21c57ca1c9977c75ffd8eb797541520bbaa32", 2, 1, 1735689601234,
     None, 1, "c8e258fb06e35fcd15070c7ddb7ca6b4e832dc116d7fbd96489ec9813af8e8c8"),
    (2, "00" * 32, 1, 1, 1700000000123, 1, 0,
     "6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9"),
    (2, "6f228a2b199023a961cee6f084d59bbb476114a2fa875ed33e8af0227aef0ca9", 2, 1, 1735689601234,
     60, 1, "29d0f08fabba3d6ad009df01f2d790a74c8041341d2c0ac80b059ea6f10e3cf8"),
]  # fmt: skip

BATCH = {
    "batch_leaf_0": "745649550a8769c42c8fde6026b5bdf1f9fb3172b8895dbb017b432b09d287e0",
    "batch_leaf_1": "d9a25d37010a7e96aa621832b2d94cef529cd4bec4e1ed4a253164ca2b8ed2ac",
    "batch_leaf_2": "6dac0a66d5a192e0743d55cd16c64d1ea91c027839c1f586f29ede9565753a68",
    "batch_root": "e9fc6ff37d8783a344c6ae79f4659a1a79b7b2ac4542b876bab49bfc3f35e4ee",
    "batch_statement": "74616c6c792d6261742d7631d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a000000000000000100000003e9fc6ff37d8783a344c6ae79f4659a1a79b7b2ac4542b876bab49bfc3f35e4ee",
    "batch_signature": "559d984c25507073ac7bd638c8493aa545c2ee2b000187dad2e7e769b8c449834d8aeecf5b6aba80cd10816914f0ea3c27d10cd45def688dcb3da01035475201",
    "batch_proof_of_leaf_2": "0a18ca8bdadcca9beb0098af338e851a863c209f4da573c1f34fd8e6657f03f9",
}


def vector_iou(v: dict[str, object]) -> Iou:
    return Iou(
        network=str(v["network"]),
        payer_key=bytes.fromhex(str(v["payer_key"])),
        payee=str(v["payee"]),
        asset=str(v["asset"]),
        amount=int(str(v["amount"])),
        nonce=bytes.fromhex(str(v["nonce"])),
        issued_at=int(str(v["issued_at"])),
        expires_at=int(str(v["expires_at"])),
        resource=str(v["resource"]),
    )


@pytest.mark.parametrize("v", VECTORS, ids=["minimal", "crawler", "edges"])
def test_vector_signing_bytes_key_and_signature(v: dict[str, object]) -> None:
    payer = Payer.from_seed(str(v["seed"]))
    assert payer.public_key.hex() == v["payer_key"]
    iou = vector_iou(v)
    assert str(v["resource"]).encode("utf-8").hex() == v["resource_hex"]
    assert iou.signing_bytes().hex() == v["signing_bytes"]
    signed = payer.sign(iou)
    assert signed.signature.hex() == v["signature"]
    assert signed.verify()
    assert Iou.from_signing_bytes(iou.signing_bytes()) == iou
    assert SignedIou.from_x402_payload(signed.to_x402_payload()) == signed


def test_vector_2_x402_json_shape() -> None:
    signed = Payer.from_seed(str(VECTORS[1]["seed"])).sign(vector_iou(VECTORS[1]))
    assert signed.to_x402_payload() == {
        "format": "tally-iou-v1",
        "iou": {
            "network": "tally:mainnet",
            "payerKey": VECTORS[1]["payer_key"],
            "payee": "news.example",
            "asset": "USDC",
            "amount": "100",
            "nonce": "8f3a5c1e0b7d4962a1e8c3f05d2b9e47",
            "issuedAt": 1735689600,
            "expiresAt": 1735689900,
            "resource": "https://news.example/2025/01/01/markets.html?page=2",
        },
        "signature": VECTORS[1]["signature"],
    }


@pytest.mark.parametrize("record", RECORDS, ids=["v1-r1", "v1-r2", "v2-r1", "v2-r2"])
def test_log_record_hashes(record: tuple[object, ...]) -> None:
    fmt, prev, seq, epoch, at_ms, charge, index, expected = record
    v = VECTORS[int(str(index))]
    got = record_hash(
        prev_hash=bytes.fromhex(str(prev)),
        seq=int(str(seq)),
        epoch=int(str(epoch)),
        accepted_at_ms=int(str(at_ms)),
        signature=bytes.fromhex(str(v["signature"])),
        evidence=bytes.fromhex(str(v["signing_bytes"])),
        charge=None if charge is None else int(str(charge)),
    )
    assert (fmt == 1) == (charge is None)
    assert got.hex() == expected
    assert commitment_id(int(str(seq)), got) == f"{seq}:{expected}"


def test_batch_vector() -> None:
    payer = Payer.from_seed(str(VECTORS[0]["seed"]))
    base = vector_iou(VECTORS[0])
    ious = [
        base,
        replace(base, amount=2, nonce=base.nonce[:15] + b"\x10"),
        replace(base, amount=3, nonce=base.nonce[:15] + b"\x11"),
    ]
    leaves = [leaf_hash(iou.signing_bytes()) for iou in ious]
    assert [leaf.hex() for leaf in leaves] == [BATCH[f"batch_leaf_{i}"] for i in range(3)]
    root = merkle_root(leaves)
    assert root.hex() == BATCH["batch_root"]
    assert batch_statement(payer.public_key, 1, 3, root).hex() == BATCH["batch_statement"]
    batch = payer.sign_batch(ious, batch_seq=1)
    assert batch.root == root and batch.statement().hex() == BATCH["batch_statement"]
    assert batch.signature.hex() == BATCH["batch_signature"]
    proof = inclusion_proof(leaves, 2)
    assert [p.hex() for p in proof] == [BATCH["batch_proof_of_leaf_2"]]
    for index in range(3):
        assert verify_inclusion(leaves[index], index, 3, inclusion_proof(leaves, index), root)
    assert not verify_inclusion(leaves[1], 2, 3, proof, root)


def test_merkle_proofs_on_uneven_trees() -> None:
    for size in (1, 2, 5, 7, 8, 13, 64, 100):
        leaves = [hashlib.sha256(bytes([i])).digest() for i in range(size)]
        root = merkle_root(leaves)
        for index in range(size):
            proof = inclusion_proof(leaves, index)
            assert verify_inclusion(leaves[index], index, size, proof, root)
            assert not verify_inclusion(bytes(32), index, size, proof, root)
            if size > 1:
                assert not verify_inclusion(leaves[index], (index + 1) % size, size, proof, root)


def test_the_document_shows_exactly_these_vectors() -> None:
    if not DOC.is_file():
        pytest.skip("docs/iou-format.md is not beside this checkout")
    doc = DOC.read_text(encoding="utf-8")
    shown = re.findall(r"^(signing_bytes|signature|record_hash)\s+= ([0-9a-f]+)$", doc, re.M)
    ours = [("signing_bytes", v["signing_bytes"]) for v in VECTORS]
    ours += [("signature", v["signature"]) for v in VECTORS]
    ours += [("record_hash", r[-1]) for r in RECORDS]
    assert {name_value for name_value in shown} == set(ours)
    for name, value in BATCH.items():
        assert re.search(rf"^{name}\s+= {value}$", doc, re.M), name


TOO_LONG = "a" * 65


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("network", TOO_LONG),
        ("network", ""),
        ("network", "tally test"),
        ("payee", TOO_LONG),
        ("payee", ""),
        ("payee", "pub:1"),
        ("asset", "ABCDEFGHIJ123"),
        ("asset", "usd"),
        ("asset", ""),
        ("resource", "x" * 1025),
        ("resource", "é" * 513),
        ("amount", 0),
        ("amount", 2**64),
        ("amount", -1),
        ("nonce", bytes(15)),
        ("payer_key", bytes(31)),
        ("issued_at", -1),
        ("expires_at", 2**64),
    ],
)
def test_out_of_range_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(IouFieldError):
        replace(vector_iou(VECTORS[0]), **{field: value})


def test_edges_that_are_allowed() -> None:
    base = vector_iou(VECTORS[0])
    assert (
        len(replace(base, resource="x" * 1024).signing_bytes()) == len(base.signing_bytes()) + 1024
    )
    assert replace(base, resource="é" * 512).resource
    assert replace(base, network="a" * 64, payee="b" * 64, asset="Z" * 12)


@pytest.mark.parametrize(
    "text", ["+1500", "01500", "1500.0", "", " 1", "1e3", "18446744073709551616"]
)
def test_amounts_have_one_spelling(text: str) -> None:
    with pytest.raises(IouFieldError):
        parse_amount(text)
    assert parse_amount("0") == 0 and parse_amount("1500") == 1500


def test_payment_id_nonce() -> None:
    payment_id = "pay_7d5d747be160e280504c099d984bcfe0"
    digest = hashlib.sha256(b"tally-payment-id-v1" + payment_id.encode()).digest()
    assert payment_id_nonce(payment_id) == digest[:16]
    for bad in ("short", "x" * 129, "has space here!!", "é" * 20):
        with pytest.raises(IouFieldError):
            payment_id_nonce(bad)


def test_money_is_exact() -> None:
    assert to_smallest_units("0.0001", 6) == 100
    assert to_smallest_units("25.00", 6) == 25_000_000
    assert to_smallest_units("0.010000000", 6) == 10_000
    assert to_smallest_units("7", 0) == 7
    for bad in ("0.0000001", "1e-3", "-1", "1.", ".5"):
        with pytest.raises(ValueError):
            to_smallest_units(bad, 6)
    assert parse_money("$0.01") == ("0.01", None)
    assert parse_money("1.50 eur") == ("1.50", "EUR")
    assert AssetScales({"USD": 6}).display(100, "USD") == "0.000100"


def test_server_scheme_prices() -> None:
    scheme = TallyServerScheme(assets={"USD": 6, "EUR": 2, "JPY": 0})
    assert scheme.parse_price("$0.001", NETWORK_ID) == AssetAmount(
        amount="1000", asset="USD", extra={}
    )
    assert scheme.parse_price("0.05 EUR", NETWORK_ID).amount == "5"
    assert scheme.parse_price(3, NETWORK_ID).amount == "3000000"
    assert scheme.parse_price({"amount": "42", "asset": "JPY"}, NETWORK_ID).amount == "42"
    assert scheme.get_asset_decimals("EUR", NETWORK_ID) == 2
    for bad in ("$0.0000001", "0.001 EUR", "1 GBP", "$0", "ten dollars"):
        with pytest.raises(ValueError):
            scheme.parse_price(bad, NETWORK_ID)
    with pytest.raises(TypeError):
        scheme.parse_price(0.01, NETWORK_ID)


NETWORK_ID = "tally:test"
