"""High-volume IOU ingest over gRPC: ``tally.v1.Ingest``.

:class:`Streamer` sends signed IOUs in batches (1,024 by default) over
``StreamBatches``, the bidirectional stream, keeping at most ``window``
batches of each stream in flight. The server answers every batch with one
result per IOU, in request order, after the batch is durable (fsynced).
Batch-signed commitments (one signature per batch) go over
``StreamSignedBatches`` / ``SubmitSignedBatch`` the same way.

Ingest takes no token (the IOU signatures are the authentication); a
``token`` given here is sent as ``authorization: Bearer <token>`` anyway, for
deployments that put ingest behind a proxy that wants one.
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from ._channel import bearer, open_channel
from .batch import SignedBatch
from .iou import Iou, SignedIou
from .proto import ingest_pb2, ingest_pb2_grpc, iou_pb2

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WINDOW",
    "BatchOutcome",
    "IouCode",
    "IouOutcome",
    "StreamProtocolError",
    "Streamer",
]

DEFAULT_BATCH_SIZE = 1024
DEFAULT_WINDOW = 4
SERVER_BATCH_MAX = 4096
"""``tally serve``'s default ``batch_ious_max``; larger batches are refused whole."""


class IouCode(enum.IntEnum):
    """Per-IOU result codes (``tally.v1.IouCode``; values are stable and never reused)."""

    UNSPECIFIED = 0
    ACCEPTED = 1
    DUPLICATE = 2
    CONFLICT = 3
    BAD_SIGNATURE = 4
    UNKNOWN_PAYER = 5
    SUSPENDED_PAYER = 6
    UNKNOWN_PAYEE = 7
    UNKNOWN_ASSET = 8
    ASSET_DISABLED = 9
    EXPIRED = 10
    NOT_YET_VALID = 11
    VALIDITY_TOO_LONG = 12
    INVALID_AMOUNT = 13
    CREDIT_LIMIT_EXCEEDED = 14
    WRONG_NETWORK = 15
    MALFORMED = 16
    KEY_REVOKED = 17
    PAYEE_SUSPENDED = 18

    @classmethod
    def _missing_(cls, value: object) -> IouCode | None:
        # A code from a newer server: keep its number rather than failing the batch.
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            member = int.__new__(cls, value)
            member._name_ = f"CODE_{value}"
            member._value_ = value
            return member
        return None


@dataclass(frozen=True, slots=True)
class IouOutcome:
    """What the engine answered for one IOU."""

    code: IouCode
    commitment: str | None
    """``<seq>:<record hash hex>`` for ACCEPTED and DUPLICATE (the original acceptance)."""
    epoch: int

    @property
    def accepted(self) -> bool:
        return self.code is IouCode.ACCEPTED


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One batch's answer: ``results[i]`` answers the batch's ``i``-th IOU."""

    batch_id: int
    results: list[IouOutcome]


class StreamProtocolError(RuntimeError):
    """The server answered out of order, or not once per batch or per IOU."""


def iou_message(iou: Iou, signature: bytes = b"") -> iou_pb2.Iou:
    """``tally.v1.Iou`` for an IOU (an empty signature for batch-signed members)."""
    return iou_pb2.Iou(
        network=iou.network,
        payer_key=iou.payer_key,
        payee=iou.payee,
        asset=iou.asset,
        amount=iou.amount,
        nonce=iou.nonce,
        issued_at=iou.issued_at,
        expires_at=iou.expires_at,
        resource=iou.resource,
        signature=signature,
    )


def batch_request(batch_id: int, ious: Sequence[SignedIou]) -> ingest_pb2.SubmitBatchRequest:
    return ingest_pb2.SubmitBatchRequest(
        batch_id=batch_id, ious=[iou_message(s.iou, s.signature) for s in ious]
    )


def signed_batch_request(batch_id: int, batch: SignedBatch) -> ingest_pb2.SubmitSignedBatchRequest:
    return ingest_pb2.SubmitSignedBatchRequest(
        batch_id=batch_id,
        batch_seq=batch.batch_seq,
        root=batch.root,
        signature=batch.signature,
        ious=[iou_message(iou) for iou in batch.ious],
    )


def outcomes(response: ingest_pb2.SubmitBatchResponse, expected: int) -> list[IouOutcome]:
    """Per-IOU outcomes of a response that must answer ``expected`` IOUs."""
    if len(response.results) != expected:
        raise StreamProtocolError(
            f"batch {response.batch_id}: {len(response.results)} results for {expected} IOUs"
        )
    out = []
    for result in response.results:
        commitment = None
        if result.HasField("commitment"):
            commitment = f"{result.commitment.seq}:{result.commitment.hash.hex()}"
        out.append(IouOutcome(IouCode(result.code), commitment, result.epoch))
    return out


Request = TypeVar("Request")
Meta = TypeVar("Meta")
_StreamMethod = Callable[..., Iterator[ingest_pb2.SubmitBatchResponse]]


class _SharedSource(Generic[Request, Meta]):
    """A thread-safe iterator of ``(batch_id, request, meta)`` that several streams draw from."""

    def __init__(self, items: Iterator[tuple[int, Request, Meta]]) -> None:
        self._items = items
        self._lock = threading.Lock()
        self.stopped = threading.Event()

    def next(self) -> tuple[int, Request, Meta] | None:
        if self.stopped.is_set():
            return None
        with self._lock:
            return next(self._items, None)


class Streamer:
    """Streams signed IOUs into ``tally serve``.

    ``target`` is ``host:port``, ``http://host:port`` or ``https://host:port``
    (TLS; pass ``credentials=grpc.ssl_channel_credentials(ca_pem)`` for a
    private CA). Or pass an existing ``channel``.

    * :meth:`send` sends any number of IOUs over ``streams`` concurrent
      streams and returns one :class:`IouOutcome` per IOU, in input order.
    * :meth:`stream` is one stream as an iterator of :class:`BatchOutcome`.
    * :meth:`submit_batch` is one unary ``SubmitBatch``.
    * :meth:`send_signed`, :meth:`stream_signed` and
      :meth:`submit_signed_batch` do the same for :class:`SignedBatch`
      (batch-signed commitments).

    Each stream keeps at most ``window`` batches unanswered: reading stops
    while the window is full, so memory stays bounded whatever the input size.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        window: int = DEFAULT_WINDOW,
        connections: int = 1,
        timeout: float | None = None,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("pass either target or channel")
        if not 1 <= batch_size <= SERVER_BATCH_MAX:
            raise ValueError(f"batch_size must be 1..={SERVER_BATCH_MAX}")
        if window < 1:
            raise ValueError("window must be at least 1")
        if connections < 1 or (channel is not None and connections != 1):
            raise ValueError("connections must be at least 1 (and 1 with a given channel)")
        self._owns_channel = channel is None
        if channel is not None:
            self._channels = [channel]
        else:
            # Channels to one target share one connection unless each keeps its own
            # subchannel pool.
            own_pool = [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else []
            self._channels = [
                open_channel(target or "", credentials, own_pool) for _ in range(connections)
            ]
        self._channel = self._channels[0]
        self._stubs = [ingest_pb2_grpc.IngestStub(c) for c in self._channels]
        self._stub = self._stubs[0]
        self._metadata = bearer(token)
        self._timeout = timeout
        self.batch_size = batch_size
        self.window = window

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_channel:
            for channel in self._channels:
                channel.close()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Blocks until the channel is connected (raises ``grpc.FutureTimeoutError``)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    # -- unary -------------------------------------------------------------------------------

    def submit_batch(self, ious: Sequence[SignedIou], batch_id: int = 1) -> list[IouOutcome]:
        """One ``SubmitBatch`` call: answered after the batch is committed."""
        response = self._stub.SubmitBatch(
            batch_request(batch_id, ious), metadata=self._metadata, timeout=self._timeout
        )
        return outcomes(response, len(ious))

    def submit_signed_batch(self, batch: SignedBatch, batch_id: int = 1) -> list[IouOutcome]:
        """One ``SubmitSignedBatch`` call for a batch-signed commitment."""
        response = self._stub.SubmitSignedBatch(
            signed_batch_request(batch_id, batch), metadata=self._metadata, timeout=self._timeout
        )
        return outcomes(response, len(batch.ious))

    # -- streams -----------------------------------------------------------------------------

    def _chunks(self, ious: Iterable[SignedIou]) -> Iterator[list[SignedIou]]:
        iterator = iter(ious)
        while chunk := list(itertools.islice(iterator, self.batch_size)):
            yield chunk

    def _iou_requests(
        self, ious: Iterable[SignedIou]
    ) -> Iterator[tuple[int, ingest_pb2.SubmitBatchRequest, int]]:
        for batch_id, chunk in enumerate(self._chunks(ious), start=1):
            yield batch_id, batch_request(batch_id, chunk), len(chunk)

    @staticmethod
    def _signed_requests(
        batches: Iterable[SignedBatch],
    ) -> Iterator[tuple[int, ingest_pb2.SubmitSignedBatchRequest, int]]:
        for batch_id, batch in enumerate(batches, start=1):
            yield batch_id, signed_batch_request(batch_id, batch), len(batch.ious)

    def _run(
        self,
        method: _StreamMethod,
        source: _SharedSource[Request, Meta],
    ) -> Iterator[tuple[Meta, ingest_pb2.SubmitBatchResponse]]:
        """One bidirectional stream fed from ``source``, at most ``window`` batches in flight."""
        window = threading.Semaphore(self.window)
        inflight: deque[tuple[int, Meta]] = deque()
        closed = threading.Event()
        failure: list[BaseException] = []

        def requests() -> Iterator[Request]:
            # Runs on gRPC's request-consumer thread.
            try:
                while True:
                    while not window.acquire(timeout=0.2):
                        if closed.is_set():
                            return
                    if closed.is_set():
                        return
                    item = source.next()
                    if item is None:
                        return
                    batch_id, request, meta = item
                    inflight.append((batch_id, meta))
                    yield request
            except BaseException as error:  # surfaced on the caller's thread below
                failure.append(error)
                raise

        call = method(requests(), metadata=self._metadata, timeout=self._timeout)
        try:
            try:
                for response in call:
                    if not inflight:
                        raise StreamProtocolError("a response to no request")
                    batch_id, meta = inflight.popleft()
                    if response.batch_id != batch_id:
                        raise StreamProtocolError(
                            f"response for batch {response.batch_id}, expected {batch_id}"
                        )
                    window.release()
                    yield meta, response
            except grpc.RpcError:
                if failure:
                    raise failure[0] from None
                raise
            if failure:
                raise failure[0]
            if inflight:
                raise StreamProtocolError(f"stream closed with {len(inflight)} batches unanswered")
        finally:
            closed.set()
            call.cancel()  # type: ignore[attr-defined]

    def _fan_out(
        self,
        method_of: Callable[[ingest_pb2_grpc.IngestStub], _StreamMethod],
        items: Iterator[tuple[int, Request, int]],
        streams: int,
    ) -> dict[int, list[IouOutcome]]:
        if streams < 1:
            raise ValueError("streams must be at least 1")
        source: _SharedSource[Request, tuple[int, int]] = _SharedSource(
            (batch_id, request, (batch_id, size)) for batch_id, request, size in items
        )
        results: dict[int, list[IouOutcome]] = {}
        errors: list[BaseException] = []

        def lane(method: _StreamMethod) -> None:
            try:
                for (batch_id, size), response in self._run(method, source):
                    results[batch_id] = outcomes(response, size)
            except BaseException as error:
                errors.append(error)
                source.stopped.set()

        threads = [
            threading.Thread(
                target=lane,
                args=(method_of(self._stubs[i % len(self._stubs)]),),
                name=f"tally-stream-{i}",
                daemon=True,
            )
            for i in range(streams)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results

    def send(self, ious: Iterable[SignedIou], *, streams: int = 1) -> list[IouOutcome]:
        """Sends every IOU; returns one outcome per IOU, in input order.

        The IOUs are cut into batches of ``batch_size``, which ``streams``
        concurrent ``StreamBatches`` streams take in turn (spread over the
        streamer's ``connections``).
        """
        results = self._fan_out(lambda stub: stub.StreamBatches, self._iou_requests(ious), streams)
        return [outcome for batch_id in sorted(results) for outcome in results[batch_id]]

    def send_signed(
        self, batches: Iterable[SignedBatch], *, streams: int = 1
    ) -> list[list[IouOutcome]]:
        """Sends batch-signed commitments; one list of per-IOU outcomes per batch, in order."""
        results = self._fan_out(
            lambda stub: stub.StreamSignedBatches, self._signed_requests(batches), streams
        )
        return [results[batch_id] for batch_id in sorted(results)]

    def stream(self, ious: Iterable[SignedIou]) -> Iterator[BatchOutcome]:
        """One ``StreamBatches`` stream: yields each batch's outcome as it is committed."""
        source: _SharedSource[ingest_pb2.SubmitBatchRequest, int] = _SharedSource(
            self._iou_requests(ious)
        )
        for size, response in self._run(self._stub.StreamBatches, source):
            yield BatchOutcome(response.batch_id, outcomes(response, size))

    def stream_signed(self, batches: Iterable[SignedBatch]) -> Iterator[BatchOutcome]:
        """One ``StreamSignedBatches`` stream of batch-signed commitments."""
        source: _SharedSource[ingest_pb2.SubmitSignedBatchRequest, int] = _SharedSource(
            self._signed_requests(batches)
        )
        for size, response in self._run(self._stub.StreamSignedBatches, source):
            yield BatchOutcome(response.batch_id, outcomes(response, size))
