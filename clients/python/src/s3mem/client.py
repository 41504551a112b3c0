"""The typed wrapper over the stubs generated from proto/s3mem/v1/memory.proto."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import grpc

from .v1 import memory_pb2 as pb
from .v1 import memory_pb2_grpc as rpc

#: Text bytes per ingest message: well under the daemon's default 4 MiB message limit.
PIECE_BYTES = 1 << 20

#: Retrieval methods by the names the CLI uses.
METHODS = {
    "default": pb.METHOD_UNSPECIFIED,
    "s3": pb.METHOD_S3,
    "bm25": pb.METHOD_BM25,
    "hybrid": pb.METHOD_HYBRID,
    "bias": pb.METHOD_BIAS,
    "rerank": pb.METHOD_RERANK,
    "dense": pb.METHOD_DENSE,
    "rag": pb.METHOD_RAG,
}

#: Answer modes by the names the CLI uses.
MODES = {
    "default": pb.ANSWER_MODE_UNSPECIFIED,
    "free": pb.ANSWER_MODE_FREE,
    "quote": pb.ANSWER_MODE_QUOTE,
    "auto": pb.ANSWER_MODE_AUTO,
}

Metadata = Union[Mapping[str, str], Iterable[Tuple[str, str]]]


class S3memError(Exception):
    """A call the daemon refused or that failed: `code` is the gRPC status code
    (`grpc.StatusCode`), `details` the daemon's message (it names the field at fault)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{details} ({code.name})")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "S3memError":
        return cls(error.code(), error.details() or "")


@dataclass(frozen=True)
class Collection:
    """A collection with its document and token counts."""

    name: str
    documents: int
    tokens: int


@dataclass(frozen=True)
class Document:
    """A stored document's record."""

    id: str
    tokens: int
    bytes: int
    metadata: Tuple[Tuple[str, str], ...]


@dataclass(frozen=True)
class Ingested:
    """What the daemon stored of an ingested document."""

    id: str
    tokens: int
    replaced: bool


@dataclass(frozen=True)
class Span:
    """One span of evidence: `text == document[chars[0]:chars[1]]` of document `doc_id`."""

    doc_id: str
    chars: Tuple[int, int]
    tokens: Tuple[int, int]
    source: str
    score: float
    text: str


@dataclass(frozen=True)
class Evidence:
    """The evidence retrieved for a question under a token budget."""

    question: str
    method: str
    budget: int
    context: str
    context_tokens: int
    spans: Tuple[Span, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    trace_json: str = ""


@dataclass(frozen=True)
class Answer:
    """The answer's last message: the whole text and how it was made."""

    answer: str
    mode: str
    stop: str
    prompt_tokens: int
    new_tokens: int
    citations: Tuple[int, ...]
    not_in_evidence: bool
    confidence: Optional[float]


def _evidence(r: pb.RetrieveResponse) -> Evidence:
    return Evidence(
        question=r.question,
        method=r.method,
        budget=r.budget,
        context=r.context,
        context_tokens=r.context_tokens,
        spans=tuple(
            Span(
                doc_id=s.doc_id,
                chars=(s.char_start, s.char_end),
                tokens=(s.token_start, s.token_end),
                source=s.source,
                score=s.score,
                text=s.text,
            )
            for s in r.spans
        ),
        timings_ms=dict(r.timings_ms),
        trace_json=r.trace_json,
    )


def _answer(r: pb.AskResult) -> Answer:
    return Answer(
        answer=r.answer,
        mode=r.mode,
        stop=r.stop,
        prompt_tokens=r.prompt_tokens,
        new_tokens=r.new_tokens,
        citations=tuple(r.citations),
        not_in_evidence=r.not_in_evidence,
        confidence=r.confidence if r.HasField("confidence") else None,
    )


def _choice(table: Mapping[str, int], what: str, name: str) -> int:
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(table)})") from None


class Memory:
    """A connection to an s3mem daemon.

    `url` is `host:port` or `http://host:port`, or `https://host:port` for TLS (`tls_ca`: the
    CA certificate's PEM file; default: the system's roots). `token` is sent as a bearer token
    with every call (`serve --auth-token-file`).
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        tls_ca: Optional[Union[str, os.PathLike]] = None,
        timeout: Optional[float] = None,
    ):
        options = [("grpc.max_receive_message_length", 256 << 20)]
        if url.startswith("https://"):
            roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(url[len("https://") :], credentials, options)
        else:
            target = url[len("http://") :] if url.startswith("http://") else url
            self._channel = grpc.insecure_channel(target, options)
        self._api = rpc.MemoryStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout

    def close(self) -> None:
        """Closes the connection."""
        self._channel.close()

    def __enter__(self) -> "Memory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as e:
            raise S3memError.from_rpc(e) from None

    def create_collection(self, name: str) -> None:
        """Creates an empty collection (ALREADY_EXISTS if the name is taken)."""
        self._call(self._api.CreateCollection, pb.CreateCollectionRequest(name=name))

    def collections(self) -> list[Collection]:
        """Lists the collections."""
        r = self._call(self._api.ListCollections, pb.ListCollectionsRequest())
        return [Collection(c.name, c.documents, c.tokens) for c in r.collections]

    def ingest(
        self,
        collection: str,
        name: Optional[str],
        text: str,
        metadata: Optional[Metadata] = None,
    ) -> Ingested:
        """Stores a document under the id `name` (None: the daemon makes one), replacing one
        with that id; returns when it is scanned and stored."""
        pairs = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
        header = pb.IngestHeader(
            collection=collection,
            id=name or "",
            metadata=[pb.MetaEntry(key=k, value=v) for k, v in pairs],
        )
        data = text.encode("utf-8")

        def messages() -> Iterator[pb.IngestRequest]:
            yield pb.IngestRequest(header=header)
            for at in range(0, len(data), PIECE_BYTES):
                yield pb.IngestRequest(text=data[at : at + PIECE_BYTES])

        r = self._call(self._api.Ingest, messages())
        return Ingested(id=r.id, tokens=r.tokens, replaced=r.replaced)

    def documents(self, collection: str) -> list[Document]:
        """Lists every document of a collection in ingest order (all pages)."""
        out: list[Document] = []
        token = ""
        while True:
            r = self._call(
                self._api.ListDocuments,
                pb.ListDocumentsRequest(collection=collection, page_token=token),
            )
            out += [
                Document(
                    id=d.id,
                    tokens=d.tokens,
                    bytes=d.bytes,
                    metadata=tuple((m.key, m.value) for m in d.metadata),
                )
                for d in r.documents
            ]
            if not r.next_page_token:
                return out
            token = r.next_page_token

    def delete(self, collection: str, name: str) -> None:
        """Deletes a document (NOT_FOUND if there is none by that id)."""
        self._call(
            self._api.DeleteDocument,
            pb.DeleteDocumentRequest(collection=collection, id=name),
        )

    def _query(self, message, collection, question, budget, method, docs, filter, trace):
        request = message(
            collection=collection,
            question=question,
            budget=budget,
            method=_choice(METHODS, "method", method),
            docs=list(docs or ()),
            trace=trace,
        )
        if filter is not None:
            if "filter" not in message.DESCRIPTOR.fields_by_name:
                raise ValueError("this client's API has no filter (built from an older proto)")
            getattr(request, "filter").CopyFrom(filter)
        return request

    def retrieve(
        self,
        collection: str,
        question: str,
        budget: int = 0,
        method: str = "default",
        *,
        docs: Optional[Sequence[str]] = None,
        filter=None,
        trace: bool = False,
    ) -> Evidence:
        """Retrieves the evidence for a question under `budget` tokens (0: the daemon's
        default), from the whole collection or only `docs`; `filter`: a `s3mem.v1.Filter`
        over document metadata."""
        request = self._query(
            pb.RetrieveRequest, collection, question, budget, method, docs, filter, trace
        )
        return _evidence(self._call(self._api.Retrieve, request))

    def ask(
        self,
        collection: str,
        question: str,
        budget: int = 0,
        method: str = "default",
        *,
        docs: Optional[Sequence[str]] = None,
        filter=None,
        mode: str = "default",
        max_new_tokens: int = 0,
        answer_model: str = "",
        trace: bool = False,
    ) -> Iterator[Union[Evidence, str, Answer]]:
        """Answers from retrieved evidence, yielding the `Evidence` first, then each piece of
        the answer's text (`str`) as it is generated, then the `Answer`. Closing the iterator
        early cancels the call."""
        request = self._query(
            pb.AskRequest, collection, question, budget, method, docs, filter, trace
        )
        request.max_new_tokens = max_new_tokens
        request.answer_model = answer_model
        request.answer_mode = _choice(MODES, "mode", mode)
        call = self._api.Ask(request, metadata=self._metadata, timeout=self._timeout)
        try:
            for r in call:
                event = r.WhichOneof("event")
                if event == "evidence":
                    yield _evidence(r.evidence)
                elif event == "delta":
                    yield r.delta
                elif event == "done":
                    yield _answer(r.done)
        except grpc.RpcError as e:
            raise S3memError.from_rpc(e) from None
        finally:
            call.cancel()

    def snapshot(self, out_path: Union[str, os.PathLike]) -> int:
        """Writes a consistent snapshot of the daemon's data dir to `out_path` (a tar archive
        that `s3mem snapshot restore` checks and restores); the file appears only whole.
        Returns its size in bytes."""
        out = Path(out_path)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    for chunk in self._api.CreateSnapshot(
                        pb.CreateSnapshotRequest(),
                        metadata=self._metadata,
                        timeout=self._timeout,
                    ):
                        f.write(chunk.data)
                except grpc.RpcError as e:
                    raise S3memError.from_rpc(e) from None
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size
