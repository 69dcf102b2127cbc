"""Generated protobuf and gRPC stubs for ``proto/tally/v1`` (package ``tally.v1``).

Do not edit the ``*_pb2*.py[i]`` files: ``scripts/gen_protos.py`` writes
them, and ``scripts/gen_protos.py --check`` fails when they differ from what
the pinned grpcio-tools and mypy-protobuf generate from the repository's protos.
"""
