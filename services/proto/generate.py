"""``make proto``: the Python messages (``*_pb2.py``, ``*_pb2.pyi``) and stubs (``*_pb2_grpc.py``) of every
``vlmops/v1/*.proto``, generated with the pinned grpcio-tools, so the same protos always give the same files.

The protos import each other as ``vlmops/v1/<name>.proto`` (the path every client language uses), so
protoc writes ``from vlmops.v1 import ...``; the package lives at ``services.proto.vlmops.v1`` here,
so those imports are rewritten to it.

    python -m services.proto.generate            # regenerate in place
    python -m services.proto.generate --check    # exit 1 if a generated file is stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "vlmops" / "v1"
IMPORT = re.compile(r"^from vlmops\.v1 import ", re.MULTILINE)
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def protos() -> list[Path]:
    return sorted(PACKAGE.glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Every generated file, written under ``out`` (``out/vlmops/v1/...``); returns their paths."""
    from grpc_tools import protoc

    sources = [str(p.relative_to(ROOT)) for p in protos()]
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in (out / "vlmops" / "v1").iterdir() if p.name.endswith(SUFFIXES))
    for path in written:
        path.write_text(IMPORT.sub("from services.proto.vlmops.v1 import ", path.read_text()))
    return written


def stale() -> list[str]:
    """Generated files that differ from what the protos give now (or are missing, or left over)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    have = {p.name: p.read_bytes() for p in PACKAGE.iterdir() if p.name.endswith(SUFFIXES)}
    return sorted(name for name in fresh.keys() | have.keys() if fresh.get(name) != have.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for name in bad:
            print(f"stale: {PACKAGE / name}", file=sys.stderr)
        return 1 if bad else 0
    for path in PACKAGE.iterdir():
        if path.name.endswith(SUFFIXES):
            path.unlink()
    for path in generate(ROOT):
        print(path.relative_to(ROOT.parents[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
