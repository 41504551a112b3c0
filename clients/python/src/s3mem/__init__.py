"""Python client of the s3mem daemon (`s3mem serve`).

    from s3mem import Memory

    with Memory("127.0.0.1:50051") as memory:
        memory.create_collection("notes")
        memory.ingest("notes", "harbour", "Velmora counted 40 boats in 1801.")
        evidence = memory.retrieve("notes", "How many boats?", budget=256)
        for event in memory.ask("notes", "How many boats?"):
            ...  # Evidence, then str pieces of the answer, then the Answer

Every failed call raises :class:`S3memError`, which carries the gRPC status code. `pb` is the
generated messages module: filters are built from it (`pb.Filter(equals=pb.MetaEquals(key=
"tenant", value="a"))`, with `all_of`, `any_of`, `negate`, ranges and document ids).
"""

from .client import (
    Answer,
    Collection,
    Document,
    Evidence,
    Ingested,
    Memory,
    S3memError,
    Span,
)
from .v1 import memory_pb2 as pb

__all__ = [
    "Answer",
    "Collection",
    "Document",
    "Evidence",
    "Ingested",
    "Memory",
    "S3memError",
    "Span",
    "pb",
]
