#!/usr/bin/env python3
"""Generate (or check) the gRPC stubs shipped in ``tally_x402.proto``.

The stubs are committed, so that building the wheel needs no code generator.
This script regenerates them from ``proto/tally/v1/*.proto`` (the repository's
own protos) with the pinned grpcio-tools and mypy-protobuf of the ``dev``
extra:

    python scripts/gen_protos.py           # write src/tally_x402/proto/*_pb2*.py[i]
    python scripts/gen_protos.py --check   # exit 1 if regenerating would change anything

Generated code imports ``tally.v1``; the stubs live in ``tally_x402.proto``,
so every ``from tally.v1 import`` is rewritten to ``from tally_x402.proto import``.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
OUT_DIR = PACKAGE_ROOT / "src" / "tally_x402" / "proto"
DEFAULT_PROTO_DIR = PACKAGE_ROOT.parent.parent / "proto"
GENERATED = re.compile(r".*_pb2(_grpc)?\.pyi?$")
IMPORT = re.compile(r"^from tally\.v1 import ", re.MULTILINE)


def generate(proto_dir: Path) -> dict[str, str]:
    from grpc_tools import protoc

    bin_dir = Path(sys.executable).parent
    protos = sorted(str(p) for p in (proto_dir / "tally" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit(f"gen_protos: no .proto files under {proto_dir / 'tally' / 'v1'}")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out=quiet:{tmp}",
            f"--mypy_grpc_out=quiet:{tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("gen_protos: protoc failed")
        out: dict[str, str] = {}
        for path in sorted((Path(tmp) / "tally" / "v1").iterdir()):
            if GENERATED.fullmatch(path.name):
                text = path.read_text(encoding="utf-8")
                out[path.name] = IMPORT.sub("from tally_x402.proto import ", text)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR)
    args = parser.parse_args()

    fresh = generate(args.proto_dir.resolve())
    present = {p.name: p for p in OUT_DIR.iterdir() if GENERATED.fullmatch(p.name)}
    if args.check:
        problems = []
        for name in sorted(set(fresh) | set(present)):
            if name not in present:
                problems.append(f"missing: {name}")
            elif name not in fresh:
                problems.append(f"stale (no longer generated): {name}")
            else:
                old = present[name].read_text(encoding="utf-8")
                if old != fresh[name]:
                    diff = difflib.unified_diff(
                        old.splitlines(), fresh[name].splitlines(), name, name, lineterm="", n=1
                    )
                    problems.append("\n".join(list(diff)[:40]))
        if problems:
            print(
                "gen_protos: the committed stubs differ from a fresh generation:", file=sys.stderr
            )
            for problem in problems:
                print(problem, file=sys.stderr)
            print("run: python scripts/gen_protos.py", file=sys.stderr)
            return 1
        print(f"gen_protos: {len(fresh)} generated files match {args.proto_dir}")
        return 0

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, path in present.items():
        if name not in fresh:
            path.unlink()
    for name, text in fresh.items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
    print(f"gen_protos: wrote {len(fresh)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
