#!/usr/bin/env python3
"""Python streamer throughput against a running ``tally serve``.

Registers fresh payers and payees (admin token), pre-signs N IOUs (not
timed, as ``tally loadgen`` pre-signs), then times ``Streamer.send``: the
Python side builds the protobuf batches and streams them over
``StreamBatches`` (``--streams`` concurrent streams on one channel, batches of
``--batch``, ``--window`` batches in flight per stream), until every IOU is
answered, i.e. durable. Prints IOUs/s; exits 1 unless every IOU is ACCEPTED.

    python bench/stream_bench.py --server http://127.0.0.1:50051 --admin-token T \\
        --ious 200000 --streams 4 [--network tally:local]

Compare with ``tally loadgen --server … --admin-token T --register --ious N --streams S``
(``scripts/bench.sh``) against the same server.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections import Counter

from tally_x402 import Payer, SignedIou
from tally_x402.admin import TallyAdmin
from tally_x402.streaming import IouCode, Streamer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="gRPC address, http://host:port")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--admin-server", help="admin API address if not --server")
    parser.add_argument("--ious", type=int, default=100_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--connections", type=int, default=1, help="HTTP/2 connections")
    parser.add_argument("--payers", type=int, default=8)
    parser.add_argument("--payees", type=int, default=16)
    parser.add_argument("--network", default="tally:local", help="the server's --network")
    parser.add_argument("--asset", default="USD")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    run = secrets.token_hex(3)
    payers = [Payer.generate() for _ in range(args.payers)]
    payees = [f"bench-{run}-{j}.example" for j in range(args.payees)]
    with TallyAdmin(args.admin_server or args.server, token=args.admin_token) as admin:
        admin.upsert_asset(args.asset, 6)
        for i, payer in enumerate(payers):
            admin.register_payer(f"bench-{run}-{i}", [payer.public_key], {args.asset: 10**15})
        for payee in payees:
            admin.register_payee(payee)

    started = time.perf_counter()
    now = int(time.time())
    ious: list[SignedIou] = [
        payers[k % args.payers].iou(
            network=args.network,
            payee=payees[(k // args.payers) % args.payees],
            asset=args.asset,
            amount=1 + k % 2000,
            resource=f"https://{payees[(k // args.payers) % args.payees]}/page/{k}",
            issued_at=now,
            expires_at=now + 6 * 3600,
        )
        for k in range(args.ious)
    ]
    signed_s = time.perf_counter() - started

    with Streamer(
        args.server, batch_size=args.batch, window=args.window, connections=args.connections
    ) as streamer:
        streamer.wait_ready()
        started = time.perf_counter()
        results = streamer.send(ious, streams=args.streams)
        elapsed = time.perf_counter() - started

    codes = Counter(r.code.name for r in results)
    rate = args.ious / elapsed
    report = {
        "ious": args.ious,
        "streams": args.streams,
        "batch": args.batch,
        "window": args.window,
        "seconds": round(elapsed, 3),
        "ious_per_second": round(rate),
        "presign_seconds": round(signed_s, 3),
        "results": dict(codes),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"pre-signed {args.ious} IOUs in {signed_s:.2f} s (not timed)")
        print(
            f"streamed {args.ious} IOUs over {args.streams} streams "
            f"(batch {args.batch}, window {args.window}) in {elapsed:.2f} s: {rate:,.0f} IOUs/s"
        )
        print("results: " + ", ".join(f"{name}={n}" for name, n in sorted(codes.items())))
    return 0 if codes.get(IouCode.ACCEPTED.name, 0) == args.ious else 1


if __name__ == "__main__":
    sys.exit(main())
