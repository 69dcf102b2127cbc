"""A real ``tally serve`` for the tests (no mocks of Tally or of the x402 SDK).

The binary is ``$TALLY_BIN``, else ``${CARGO_TARGET_DIR:-~/.cache/tally-target}/debug/tally``.
One server per test session, on 127.0.0.1 port 0 for every listener, network
``tally:test``; tests use their own payer and payee ids so they never share
balances.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NETWORK = "tally:test"
READY_TIMEOUT_S = 60.0


def tally_bin() -> Path:
    explicit = os.environ.get("TALLY_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache" / "tally-target")
    return Path(target) / "debug" / "tally"


@dataclass
class TallyServer:
    binary: Path
    token: str
    grpc_addr: str
    http_addr: str
    metrics_addr: str
    pid: int
    data_dir: Path

    @property
    def grpc_url(self) -> str:
        return f"http://{self.grpc_addr}"

    @property
    def facilitator_url(self) -> str:
        return f"http://{self.http_addr}"

    def cli(self, *args: str) -> str:
        """Runs ``tally <args> --server http://<grpc>`` with the admin token in the environment."""
        env = {**os.environ, "TALLY_ADMIN_TOKEN": self.token, "TALLY_LOG": "warn"}
        done = subprocess.run(
            [str(self.binary), *args, "--server", self.grpc_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"tally {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done.stdout

    def balance(self, *, payee: str | None = None, payer: str | None = None) -> list[Any]:
        args = ["balance", "--json"]
        if payee is not None:
            args += ["--payee", payee]
        if payer is not None:
            args += ["--payer", payer]
        report = json.loads(self.cli(*args))
        assert report["truncated"] is False
        rows: list[Any] = report["rows"]
        return rows

    def register_payer(self, payer_id: str, key_hex: str, limit: str = "25.00") -> None:
        self.cli("payer", "register", payer_id, "--key", key_hex, "--limit", f"USD={limit}")

    def register_payee(self, payee_id: str) -> None:
        self.cli("payee", "register", payee_id, "--name", payee_id)


def _read_ready(path: Path) -> dict[str, Any] | None:
    try:
        ready: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    wanted = ("grpc_addr", "http_addr", "pid")
    return ready if all(ready.get(k) for k in wanted) else None


@pytest.fixture(scope="session")
def tally(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TallyServer]:
    binary = tally_bin()
    if not binary.is_file():
        pytest.fail(f"no tally binary at {binary}: build it or set TALLY_BIN", pytrace=False)
    root = tmp_path_factory.mktemp("tally")
    ready_file = root / "ready.json"
    token = secrets.token_hex(16)
    log = (root / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            str(binary),
            "serve",
            "--data-dir",
            str(root / "data"),
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--network",
            NETWORK,
            "--ready-file",
            str(ready_file),
        ],
        env={**os.environ, "TALLY_ADMIN_TOKEN": token, "TALLY_LOG": "warn"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ready = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while ready is None:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"tally serve exited {proc.returncode}: {(root / 'serve.log').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"tally serve not ready after {READY_TIMEOUT_S}s")
        ready = _read_ready(ready_file)
        if ready is None:
            time.sleep(0.02)  # poll interval only: readiness is the ready file
    server = TallyServer(
        binary=binary,
        token=token,
        grpc_addr=ready["grpc_addr"],
        http_addr=ready["http_addr"],
        metrics_addr=ready.get("metrics_addr") or "",
        pid=int(ready["pid"]),
        data_dir=root / "data",
    )
    try:
        server.cli("asset", "register", "USD", "--scale", "6")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


@pytest.fixture
def unique() -> str:
    """A short random suffix for account ids."""
    return secrets.token_hex(4)
