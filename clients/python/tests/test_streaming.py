"""gRPC ingest into a real ``tally serve``: the streamer, batch-signed commitments, limits."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator

import grpc
import pytest

from tally_x402 import Payer, SignedIou, parse_commitment_id
from tally_x402.admin import TallyQuery
from tally_x402.batch import leaf_hash, verify_inclusion
from tally_x402.streaming import IouCode, Streamer

from .conftest import NETWORK, TallyServer

STREAMED_IOUS = 100_000
PAYERS = 5
PAYEES = 7


def test_streams_100k_ious_every_one_accepted_and_balances_match(
    tally: TallyServer, unique: str
) -> None:
    payers = [Payer.generate() for _ in range(PAYERS)]
    payer_ids = [f"bulk-{unique}-{i}" for i in range(PAYERS)]
    payees = [f"pub-{unique}-{j}.example" for j in range(PAYEES)]
    for payer_id, payer in zip(payer_ids, payers, strict=True):
        tally.register_payer(payer_id, payer.public_key_hex, limit="1000000")
    for payee in payees:
        tally.register_payee(payee)

    now = int(time.time())
    expected: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    ious: list[SignedIou] = []
    for k in range(STREAMED_IOUS):
        p, q = k % PAYERS, (k // PAYERS) % PAYEES
        amount = 1 + (k * 7919) % 2000
        ious.append(
            payers[p].iou(
                network=NETWORK,
                payee=payees[q],
                asset="USD",
                amount=amount,
                resource=f"https://{payees[q]}/page/{k}",
                issued_at=now,
                expires_at=now + 3600,
            )
        )
        totals = expected[(payer_ids[p], payees[q])]
        totals[0] += amount
        totals[1] += 1

    with Streamer(tally.grpc_url, batch_size=1024, window=4, connections=2) as streamer:
        results = streamer.send(ious, streams=4)
    assert len(results) == STREAMED_IOUS
    codes = {code: sum(1 for r in results if r.code is code) for code in {r.code for r in results}}
    assert codes == {IouCode.ACCEPTED: STREAMED_IOUS}
    seqs = {parse_commitment_id(r.commitment or "")[0] for r in results}
    assert len(seqs) == STREAMED_IOUS  # one log record each

    with TallyQuery(tally.grpc_url, token=tally.token) as query:
        got: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for payee in payees:
            for row in query.balances(payee=payee):
                assert row.asset == "USD" and row.scale == 6
                got[(row.payer, row.payee)][0] += row.amount
                got[(row.payer, row.payee)][1] += row.count
    assert dict(got) == dict(expected)

    # The CLI reads the same ledger.
    rows = tally.balance(payee=payees[0])
    cli = {r["payer"]: (int(r["amount_units"]), r["ious"]) for r in rows}
    assert cli == {
        payer: tuple(totals) for (payer, payee), totals in expected.items() if payee == payees[0]
    }

    # One stream, as an iterator of batches; a resend is DUPLICATE with the original commitment.
    with Streamer(tally.grpc_url, batch_size=100, window=2) as streamer:
        batches = list(streamer.stream(ious[:250]))
    assert [len(b.results) for b in batches] == [100, 100, 50]
    again = [r for b in batches for r in b.results]
    assert {r.code for r in again} == {IouCode.DUPLICATE}
    assert [r.commitment for r in again] == [r.commitment for r in results[:250]]


def test_batch_signed_commitments_are_accepted_with_inclusion_proofs(
    tally: TallyServer, unique: str
) -> None:
    payer = Payer.generate()
    payee = f"batched-{unique}.example"
    tally.register_payer(f"batcher-{unique}", payer.public_key_hex, limit="1000")
    tally.register_payee(payee)

    def ious(count: int, start: int) -> list[SignedIou]:
        return [
            payer.iou(network=NETWORK, payee=payee, asset="USD", amount=10 + i, resource=f"/r/{i}")
            for i in range(start, start + count)
        ]

    batches = [
        payer.sign_batch([s.iou for s in ious(count, 1000 * n)], batch_seq=n + 1)
        for n, count in enumerate([1, 3, 500, 1024])
    ]
    with Streamer(tally.grpc_url) as streamer:
        streamed = streamer.send_signed(batches[:3], streams=2)
        unary = streamer.submit_signed_batch(batches[3])
        assert [len(r) for r in streamed] == [1, 3, 500]
        for outcome in [*(r for rs in streamed for r in rs), *unary]:
            assert outcome.code is IouCode.ACCEPTED, outcome

        # The same IOUs under a new statement: each is a DUPLICATE of its acceptance.
        resigned = payer.sign_batch(batches[1].ious, batch_seq=99)
        dup = streamer.submit_signed_batch(resigned)
        assert [r.code for r in dup] == [IouCode.DUPLICATE] * 3
        assert [r.commitment for r in dup] == [r.commitment for r in streamed[1]]

        # A tampered root is refused whole.
        fresh = payer.sign_batch([s.iou for s in ious(2, 5000)], batch_seq=100)
        forged = type(fresh)(fresh.batch_seq, fresh.ious, bytes(32), fresh.signature)
        assert {r.code for r in streamer.submit_signed_batch(forged)} == {IouCode.BAD_SIGNATURE}

    # A receipt proves membership with our own RFC 9162 check.
    batch = batches[2]
    with TallyQuery(tally.grpc_url, token=tally.token) as query:
        receipt = query.receipt(payer.public_key, batch.ious[137].nonce)
        rows = query.balances(payee=payee)
    assert receipt.found and receipt.evidence_format == "tally-batch-v1"
    assert receipt.batch_statement == batch.statement()
    assert receipt.signature == batch.signature and receipt.leaf_index == 137
    assert list(receipt.inclusion_proof) == batch.proof(137)
    assert verify_inclusion(
        leaf_hash(receipt.iou_signing_bytes), 137, len(batch.ious), batch.proof(137), batch.root
    )
    total = sum(iou.amount for b in batches for iou in b.ious)
    assert sum(r.amount for r in rows) == total
    assert sum(r.count for r in rows) == sum(len(b.ious) for b in batches)


def test_a_payer_over_its_credit_limit_gets_credit_limit_exceeded(
    tally: TallyServer, unique: str
) -> None:
    payer = Payer.generate()
    payee = f"limited-{unique}.example"
    tally.register_payer(f"limited-{unique}", payer.public_key_hex, limit="0.001")  # 1000 units
    tally.register_payee(payee)
    amounts = [600, 400, 1, 300]

    def iou(amount: int) -> SignedIou:
        return payer.iou(network=NETWORK, payee=payee, asset="USD", amount=amount, resource="/x")

    with Streamer(tally.grpc_url) as streamer:
        results = streamer.submit_batch([iou(a) for a in amounts])
        # 600 + 400 is exactly the limit (inclusive); anything more is refused, per IOU.
        assert [r.code for r in results] == [
            IouCode.ACCEPTED,
            IouCode.ACCEPTED,
            IouCode.CREDIT_LIMIT_EXCEEDED,
            IouCode.CREDIT_LIMIT_EXCEEDED,
        ]
        assert results[2].commitment is None
        over = streamer.send([iou(1)])
        assert [r.code for r in over] == [IouCode.CREDIT_LIMIT_EXCEEDED]
    [row] = tally.balance(payee=payee)
    assert int(row["amount_units"]) == 1000 and row["ious"] == 2


def test_per_iou_codes_and_transport_errors(tally: TallyServer, unique: str) -> None:
    payer = Payer.generate()
    payee = f"codes-{unique}.example"
    tally.register_payer(f"codes-{unique}", payer.public_key_hex, limit="10")
    tally.register_payee(payee)
    stranger = Payer.generate()
    good = payer.iou(network=NETWORK, payee=payee, asset="USD", amount=5)
    batch = [
        good,
        payer.iou(network="tally:elsewhere", payee=payee, asset="USD", amount=5),
        payer.iou(network=NETWORK, payee="nobody.example", asset="USD", amount=5),
        payer.iou(network=NETWORK, payee=payee, asset="EUR", amount=5),
        stranger.iou(network=NETWORK, payee=payee, asset="USD", amount=5),
        SignedIou(good.iou, bytes(64)),
    ]
    with Streamer(tally.grpc_url) as streamer:
        codes = [r.code for r in streamer.submit_batch(batch)]
        assert codes == [
            IouCode.ACCEPTED,
            IouCode.WRONG_NETWORK,
            IouCode.UNKNOWN_PAYEE,
            IouCode.UNKNOWN_ASSET,
            IouCode.UNKNOWN_PAYER,
            IouCode.BAD_SIGNATURE,
        ]
        too_big = Streamer(tally.grpc_url, batch_size=4096)
        with pytest.raises(grpc.RpcError) as refused:
            too_big.submit_batch([good] * 4097)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        too_big.close()
    # Query needs the token; ingest does not.
    with TallyQuery(tally.grpc_url, token="wrong") as query, pytest.raises(grpc.RpcError) as denied:
        query.balances(payee=payee)
    assert denied.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_an_error_in_the_input_surfaces_on_the_caller(tally: TallyServer, unique: str) -> None:
    payer = Payer.generate()
    payee = f"broken-{unique}.example"
    tally.register_payer(f"broken-{unique}", payer.public_key_hex, limit="10")
    tally.register_payee(payee)

    def ious() -> Iterator[SignedIou]:
        for i in range(2500):
            yield payer.iou(network=NETWORK, payee=payee, asset="USD", amount=1, resource=f"/{i}")
        raise RuntimeError("the input broke")

    with Streamer(tally.grpc_url, window=2) as streamer:
        with pytest.raises(RuntimeError, match="the input broke"):
            streamer.send(ious(), streams=2)
        with pytest.raises(RuntimeError, match="the input broke"):
            list(streamer.stream(ious()))
        # The streamer is still usable afterwards.
        assert [r.code for r in streamer.send([next(ious())])] == [IouCode.ACCEPTED]
