"""Thin clients for ``tally.v1.Admin`` and ``tally.v1.Query``.

Both need ``authorization: Bearer <token>``: the admin token for Admin; the
admin token or a query token (``tally token create``) for Query. For
anything not wrapped here, use the generated stubs in :mod:`tally_x402.proto`
with :attr:`TallyAdmin.stub` / :attr:`TallyQuery.stub` and :attr:`metadata`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc

from ._channel import bearer, open_channel
from .proto import admin_pb2, admin_pb2_grpc, query_pb2, query_pb2_grpc

__all__ = ["Balance", "Exposure", "TallyAdmin", "TallyQuery"]


class _Client:
    def __init__(
        self,
        target: str | None,
        token: str,
        channel: grpc.Channel | None,
        credentials: grpc.ChannelCredentials | None,
        timeout: float | None,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("pass either target or channel")
        self._owns_channel = channel is None
        self.channel = channel if channel is not None else open_channel(target or "", credentials)
        self.metadata = bearer(token)
        self.timeout = timeout

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()


class TallyAdmin(_Client):
    """Accounts and assets (every call is journaled under the admin token)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        super().__init__(target, token, channel, credentials, timeout)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)

    def __enter__(self) -> TallyAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upsert_asset(self, code: str, scale: int, enabled: bool = True) -> None:
        asset = admin_pb2.Asset(code=code, scale=scale, enabled=enabled)
        self.stub.UpsertAsset(
            admin_pb2.UpsertAssetRequest(asset=asset), metadata=self.metadata, timeout=self.timeout
        )

    def register_payer(
        self,
        payer_id: str,
        keys: Iterable[bytes],
        limits: Mapping[str, int],
        display_name: str = "",
    ) -> None:
        """Registers a payer; ``limits`` maps asset codes to credit limits in smallest units."""
        request = admin_pb2.RegisterPayerRequest(
            id=payer_id,
            display_name=display_name,
            keys=list(keys),
            credit_limits=[
                admin_pb2.CreditLimit(asset=asset, limit=str(limit))
                for asset, limit in limits.items()
            ],
        )
        self.stub.RegisterPayer(request, metadata=self.metadata, timeout=self.timeout)

    def set_credit_limit(self, payer_id: str, asset: str, limit: int) -> None:
        request = admin_pb2.SetCreditLimitRequest(
            payer_id=payer_id, limit=admin_pb2.CreditLimit(asset=asset, limit=str(limit))
        )
        self.stub.SetCreditLimit(request, metadata=self.metadata, timeout=self.timeout)

    def register_payee(
        self, payee_id: str, display_name: str = "", payout_destination: str = ""
    ) -> None:
        payee = admin_pb2.Payee(
            id=payee_id, display_name=display_name, payout_destination=payout_destination
        )
        self.stub.RegisterPayee(
            admin_pb2.RegisterPayeeRequest(payee=payee),
            metadata=self.metadata,
            timeout=self.timeout,
        )


@dataclass(frozen=True, slots=True)
class Balance:
    """What ``payer`` owes ``payee`` in ``asset`` within one epoch, in smallest units."""

    epoch: int
    payer: str
    payee: str
    asset: str
    amount: int
    count: int
    scale: int


@dataclass(frozen=True, slots=True)
class Exposure:
    asset: str
    owed: int
    limit: int
    scale: int


class TallyQuery(_Client):
    """Balances, exposure and single IOUs (read-only)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        super().__init__(target, token, channel, credentials, timeout)
        self.stub = query_pb2_grpc.QueryStub(self.channel)

    def __enter__(self) -> TallyQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def balances(
        self, *, payer: str = "", payee: str = "", asset: str = "", epoch: int = 0
    ) -> list[Balance]:
        """Every balance row matching the filter (all pages)."""
        rows: list[Balance] = []
        page_token = b""
        while True:
            request = query_pb2.BalancesRequest(
                epoch=epoch, payer=payer, payee=payee, asset=asset, page_token=page_token
            )
            response = self.stub.Balances(request, metadata=self.metadata, timeout=self.timeout)
            rows += [
                Balance(r.epoch, r.payer, r.payee, r.asset, int(r.amount), r.count, r.scale)
                for r in response.rows
            ]
            if not response.truncated or not response.next_page_token:
                return rows
            page_token = response.next_page_token

    def exposure(self, payer: str) -> list[Exposure]:
        response = self.stub.Exposure(
            query_pb2.ExposureRequest(payer=payer), metadata=self.metadata, timeout=self.timeout
        )
        return [Exposure(r.asset, int(r.owed), int(r.limit), r.scale) for r in response.rows]

    def get_iou(self, payer_key: bytes, nonce: bytes) -> query_pb2.GetIouResponse:
        return self.stub.GetIou(
            query_pb2.GetIouRequest(payer_key=payer_key, nonce=nonce),
            metadata=self.metadata,
            timeout=self.timeout,
        )

    def receipt(self, payer_key: bytes, nonce: bytes) -> query_pb2.Receipt:
        return self.stub.GetReceipt(
            query_pb2.GetIouRequest(payer_key=payer_key, nonce=nonce),
            metadata=self.metadata,
            timeout=self.timeout,
        )
