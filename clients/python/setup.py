"""Build hook: compiles the daemon's API (proto/s3mem/v1/memory.proto) into `s3mem.v1` with
grpcio-tools when the package is built, so the stubs always match the proto they are built
from and none are committed."""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTO = Path("s3mem") / "v1" / "memory.proto"


def proto_root() -> Path:
    """Returns the folder holding s3mem/v1/memory.proto: $S3MEM_PROTO_DIR, or the repository's
    proto/ above this folder."""
    given = os.environ.get("S3MEM_PROTO_DIR")
    candidates = [Path(given)] if given else []
    here = Path(__file__).resolve().parent
    candidates += [parent / "proto" for parent in here.parents]
    for root in candidates:
        if (root / PROTO).is_file():
            return root
    raise SystemExit(
        f"cannot find {PROTO}: build from the s3mem repository (pip install ./clients/python) "
        "or set S3MEM_PROTO_DIR to its proto/ folder"
    )


class BuildWithStubs(build_py):
    """Runs protoc (from grpcio-tools) into the build folder after the package's own files."""

    def run(self):
        super().run()
        import grpc_tools
        from grpc_tools import protoc

        root = proto_root()
        out = Path(self.build_lib)
        well_known = Path(grpc_tools.__file__).parent / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(root / PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {root / PROTO}")
        (out / "s3mem" / "v1" / "__init__.py").write_text(
            '"""Generated from proto/s3mem/v1/memory.proto at build time."""\n'
        )


setup(cmdclass={"build_py": BuildWithStubs})
