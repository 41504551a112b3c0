"""Every method of `s3mem.Memory` against the real daemon."""

import re
import subprocess
import tarfile
import uuid

import grpc
import pytest

from s3mem import Answer, Evidence, Memory, S3memError, pb

TOWN = "".join(
    f"In the year {1800 + i}, the harbour of Velmora counted {3 + i * 7 % 23} fishing boats "
    f"and {11 + i * 5 % 17} lanterns. "
    for i in range(6)
)
ORSK = "The lighthouse keeper of Orsk logged 41 storms in one winter. "


@pytest.fixture()
def collection(memory):
    name = f"c-{uuid.uuid4().hex[:8]}"
    memory.create_collection(name)
    memory.ingest(name, "town", TOWN, {"source": "test", "year": "1800"})
    memory.ingest(name, "orsk", ORSK, [("source", "log")])
    return name


def test_collections_documents_and_delete(memory, collection):
    found = {c.name: c for c in memory.collections()}[collection]
    assert found.documents == 2 and found.tokens > 0
    docs = memory.documents(collection)
    assert [d.id for d in docs] == ["town", "orsk"]
    assert docs[0].metadata == (("source", "test"), ("year", "1800"))
    assert docs[1].bytes == len(ORSK.encode())

    again = memory.ingest(collection, "orsk", ORSK + "It rained.", None)
    assert again.id == "orsk" and again.replaced and again.tokens > 0
    generated = memory.ingest(collection, None, "A page without a name.")
    assert generated.id.startswith("#") and not generated.replaced

    memory.delete(collection, "orsk")
    assert [d.id for d in memory.documents(collection)] == ["town", generated.id]
    with pytest.raises(S3memError) as e:
        memory.delete(collection, "orsk")
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "orsk" in e.value.details
    with pytest.raises(S3memError) as e:
        memory.create_collection(collection)
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_retrieve(memory, collection):
    evidence = memory.retrieve(collection, "How many storms did the keeper log?", 64, "bm25")
    assert isinstance(evidence, Evidence)
    assert evidence.method == "bm25" and evidence.budget == 64
    assert 0 < evidence.context_tokens <= 64
    assert any(s.doc_id == "orsk" and "41 storms" in s.text for s in evidence.spans)
    only = memory.retrieve(collection, "boats", 64, "hybrid", docs=["town"])
    assert only.spans and {s.doc_id for s in only.spans} == {"town"}
    with pytest.raises(S3memError) as e:
        memory.retrieve(collection, "", 64)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "question" in e.value.details
    with pytest.raises(ValueError):
        memory.retrieve(collection, "boats", 64, "nearest")


@pytest.mark.skipif(not hasattr(pb, "Filter"), reason="built from a proto without filters")
def test_filters_narrow_retrieve_and_ask(memory, collection):
    log = pb.Filter(equals=pb.MetaEquals(key="source", value="log"))
    evidence = memory.retrieve(collection, "How many storms or boats?", 128, "hybrid", filter=log)
    assert evidence.spans and {s.doc_id for s in evidence.spans} == {"orsk"}
    either = pb.Filter(any_of=pb.FilterList(filters=[log, pb.Filter(doc_ids=pb.DocIds(ids=["town"]))]))
    both = memory.retrieve(collection, "How many storms or boats?", 256, "bm25", filter=either)
    assert {s.doc_id for s in both.spans} <= {"orsk", "town"} and both.spans
    nobody = pb.Filter(equals=pb.MetaEquals(key="source", value="nobody"))
    empty = memory.retrieve(collection, "How many storms?", 128, filter=nobody)
    assert empty.spans == () and empty.context_tokens == 0
    first = next(iter(memory.ask(collection, "How many storms?", 128, filter=log,
                                 max_new_tokens=4)))
    assert isinstance(first, Evidence) and {s.doc_id for s in first.spans} == {"orsk"}


def test_ask_yields_evidence_then_text_then_the_answer(memory, collection):
    # The evidence is the keeper's log alone, so the answer can be checked whatever the order
    # of pieces (the 135M reader answers from the piece nearest the question, and the evidence
    # now gives the best piece first).
    events = list(
        memory.ask(collection, "How many storms did the keeper log?", 128, docs=["orsk"],
                   mode="free", max_new_tokens=16)
    )
    assert isinstance(events[0], Evidence) and events[0].spans
    assert isinstance(events[-1], Answer)
    pieces = events[1:-1]
    assert pieces and all(isinstance(p, str) for p in pieces)
    # The final answer carries each sentence's citation, `[n]`, which the stream does not.
    assert re.sub(r" ?\[\d+\]", "", events[-1].answer) == "".join(pieces)
    assert "41" in events[-1].answer
    assert events[-1].mode == "free" and events[-1].new_tokens <= 16


def test_snapshot_restores_with_the_cli(memory, collection, binary, tmp_path):
    out = tmp_path / "snap.tar"
    size = memory.snapshot(out)
    assert size == out.stat().st_size
    with tarfile.open(out) as archive:
        names = archive.getnames()
    assert names[-1] == "MANIFEST.json" and any(n.startswith("store/") for n in names)
    restored = tmp_path / "restored"
    subprocess.run([binary, "snapshot", "restore", out, restored], check=True)
    verified = subprocess.run(
        [binary, "verify", "--data-dir", restored], check=True, capture_output=True, text=True
    )
    assert "documents verified" in verified.stdout


def test_the_token_is_required(daemon):
    with Memory(daemon) as anonymous:
        with pytest.raises(S3memError) as e:
            anonymous.collections()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Memory(daemon, "wrong") as wrong:
        with pytest.raises(S3memError) as e:
            wrong.collections()
    assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
