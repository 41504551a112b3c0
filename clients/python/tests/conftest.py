"""Starts a real `s3mem serve` (the binary cargo built, with the real SmolLM2 from
~/.cache/s3mem/models) on a fresh data dir for the session, with a bearer token."""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from s3mem import Memory, S3memError

REPO = Path(__file__).resolve().parents[3]
TOKEN = "python-client-test-token"


def s3mem_binary() -> Path:
    """Returns $S3MEM_BIN, else the newest s3mem cargo built ($CARGO_TARGET_DIR or the
    repository's target/, debug or release)."""
    given = os.environ.get("S3MEM_BIN")
    if given:
        return Path(given)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    built = [target / p / "s3mem" for p in ("debug", "release")]
    built = [b for b in built if b.is_file()]
    if not built:
        pytest.exit(f"no s3mem binary under {target}: run `cargo build` or set S3MEM_BIN")
    return max(built, key=lambda b: b.stat().st_mtime)


@pytest.fixture(scope="session")
def binary() -> Path:
    return s3mem_binary()


@pytest.fixture(scope="session")
def daemon(binary, tmp_path_factory):
    """Yields the daemon's address once its model has loaded; stops it with SIGTERM."""
    work = tmp_path_factory.mktemp("daemon")
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env = dict(os.environ, S3MEM_THREADS=os.environ.get("S3MEM_THREADS", "2"))
    child = subprocess.Popen(
        [
            str(binary),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(work / "data"),
            "--auth-token-file",
            str(token_file),
            "--embedder",
            "none",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    address = None
    for line in child.stderr:
        m = re.match(r"s3mem: listening on (\S+)", line)
        if m:
            address = m.group(1)
            break
    if address is None:
        child.wait()
        pytest.exit(f"s3mem serve exited with {child.returncode} before listening")
    # Drained so the daemon never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in child.stderr], daemon=True).start()
    # Model work answers UNAVAILABLE until the model has loaded; a question to a collection
    # that does not exist answers NOT_FOUND from then on.
    with Memory(address, TOKEN) as memory:
        deadline = time.monotonic() + 300
        while True:
            try:
                memory.retrieve("no-such-collection", "ready?")
            except S3memError as e:
                if e.code.name == "NOT_FOUND":
                    break
                if e.code.name != "UNAVAILABLE" or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    yield address
    child.terminate()
    child.wait(timeout=60)


@pytest.fixture()
def memory(daemon):
    with Memory(daemon, TOKEN) as m:
        yield m
