"""gRPC channel set-up shared by the streamer and the admin/query clients."""

from __future__ import annotations

import grpc

MESSAGE_BYTES_MAX = 64 * 1024 * 1024
"""A 4,096-IOU batch with 1 KiB resources is ~5 MiB: well above gRPC's 4 MiB default."""

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
]


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    options: list[tuple[str, int]] | None = None,
) -> grpc.Channel:
    """A channel to ``host:port``, ``http://host:port`` (plaintext) or ``https://host:port`` (TLS).

    ``credentials`` (``grpc.ssl_channel_credentials(ca_pem)``) forces TLS.
    """
    secure = credentials is not None
    for prefix in ("http://", "https://"):
        if target.startswith(prefix):
            secure = secure or prefix == "https://"
            target = target[len(prefix) :]
    target = target.rstrip("/")
    opts = CHANNEL_OPTIONS + list(options or [])
    if secure:
        return grpc.secure_channel(target, credentials or grpc.ssl_channel_credentials(), opts)
    return grpc.insecure_channel(target, opts)


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer <token>`` call metadata, or none."""
    if token is None:
        return ()
    if not token or any(c in token for c in "\r\n"):
        raise ValueError("a bearer token is a non-empty single line")
    return (("authorization", f"Bearer {token}"),)
