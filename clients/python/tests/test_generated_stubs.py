"""The committed gRPC stubs are exactly what the pinned generators make from proto/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT.parent.parent / "proto"


def test_regenerating_the_stubs_changes_nothing() -> None:
    if not (PROTO_DIR / "tally" / "v1").is_dir():
        pytest.skip("the repository's proto/ is not beside this checkout")
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (the dev extra) is not installed")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_stubs_import_and_name_the_tally_v1_services() -> None:
    from tally_x402.proto import admin_pb2, ingest_pb2, iou_pb2, query_pb2, settlement_pb2

    assert ingest_pb2.DESCRIPTOR.package == "tally.v1"
    assert set(ingest_pb2.DESCRIPTOR.services_by_name) == {"Ingest"}
    assert set(query_pb2.DESCRIPTOR.services_by_name) == {"Query"}
    assert set(admin_pb2.DESCRIPTOR.services_by_name) == {"Admin"}
    assert set(settlement_pb2.DESCRIPTOR.services_by_name) == {"Settlement"}
    assert iou_pb2.IouCode.Name(14) == "IOU_CODE_CREDIT_LIMIT_EXCEEDED"


def test_python_result_codes_mirror_the_proto_enum() -> None:
    from tally_x402.proto import iou_pb2
    from tally_x402.streaming import IouCode

    proto = {name.removeprefix("IOU_CODE_"): value for name, value in iou_pb2.IouCode.items()}
    assert proto == {code.name: code.value for code in IouCode}
    assert IouCode(99).name == "CODE_99"  # a newer server's code is kept, not fatal
