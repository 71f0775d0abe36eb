"""Hostile data: what a file in the data dir or a source tree, or a request body, could do to a worker
or an API process. Each test failed before its fix."""

from __future__ import annotations

import dataclasses
import json
import pickle
import socket
import time
from urllib.parse import urlsplit

import diskcache
import numpy as np
import pytest

from shared.index.embedcache import EmbeddingCache
from tests.support import create_collection

pytestmark = pytest.mark.security

UNPICKLED: list[str] = []


def _unpickled(tag: str) -> str:
    """What a planted pickle would call when loaded (stands in for os.system)."""
    UNPICKLED.append(tag)
    return tag


class Planted:
    def __reduce__(self):
        return (_unpickled, ("ran",))


def test_embedding_cache_never_unpickles_a_planted_entry(tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir()
    planted = diskcache.Cache(str(directory))  # diskcache's default Disk pickles what is not bytes
    planted.set("m|evil", Planted())
    planted.set("m|vector-pickled", pickle.dumps(np.ones(4, dtype=np.float32)))  # bytes, wrong length
    planted.set("m|good", np.arange(4, dtype=np.float32).tobytes())
    planted.close()
    UNPICKLED.clear()

    cache = EmbeddingCache(directory, 1 << 20)
    found = cache.get_many("m", ["evil", "vector-pickled", "good"], dim=4)
    cache.close()

    assert UNPICKLED == []
    assert sorted(found) == ["good"]
    assert found["good"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_embedding_cache_writes_raw_bytes_only(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache", 1 << 20)
    cache.put_many("m", {"h": np.ones(3, dtype=np.float32)})
    modes = {row[0] for row in cache.cache._sql("SELECT mode FROM Cache").fetchall()}
    assert modes == {diskcache.core.MODE_RAW}
    assert cache.get_many("m", ["h"], 3)["h"].tolist() == [1.0, 1.0, 1.0]
    cache.close()


def _chunked_post(base: str, path: str, body_bytes: int) -> tuple[int, dict, bytes]:
    """POST a JSON body of `body_bytes` bytes with Transfer-Encoding: chunked (no Content-Length)."""
    url = urlsplit(base)
    body = b'{"documents": [{"id": "a", "text": "' + b"x" * body_bytes + b'"}]}'
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    try:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        step = 64 * 1024
        try:
            for start in range(0, len(body), step):
                piece = body[start:start + step]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        data = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                got = sock.recv(65536)
            except ConnectionResetError:
                break
            if not got:
                break
            data += got
    finally:
        sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        payload = out
    return status, headers, payload


@pytest.mark.integration
def test_chunked_body_over_the_limit_is_413(settings, procs):
    limit = 256 * 1024
    cfg = dataclasses.replace(settings, max_request_bytes=limit)
    base = procs.api(cfg)
    create_collection(base)
    status, headers, payload = _chunked_post(base, "/v1/collections/docs/documents", 2 * limit)
    assert status == 413, payload[:500]
    problem = json.loads(payload)
    assert problem["code"] == "payload_too_large", problem
    assert str(limit) in problem["message"], problem
    # Under the limit, the same chunked request is accepted.
    status, _, payload = _chunked_post(base, "/v1/collections/docs/documents?rebuild=false", limit // 4)
    assert status == 202, payload[:500]


FAKE_AWS = "AKIAQ3EGRT5XJ7Y2ZK4M"
FAKE_PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
            "-----END RSA PRIVATE KEY-----\n")


def test_files_holding_secrets_are_not_ingested(tmp_path):
    import fakeredis

    from shared.sources.submit import add_source, submit_reconcile
    from tests.sourcetree import INDEXED, make_tree
    from tests.test_sources_domain import Env

    env = Env(fakeredis.FakeRedis(decode_responses=True), tmp_path)
    tree = env.roots / "orchard"
    make_tree(tree)
    (tree / "deploy.md").write_text(f"# Deploy\n\nUse the key `{FAKE_AWS}` with the bucket.\n")
    (tree / "tls.py").write_text(f'KEY = """\n{FAKE_PEM}"""\n\ndef load():\n    return KEY\n')
    (tree / "notes.md").write_text("# Notes\n\nA sha256 such as 3a7bd3e2360a3d29eea436fcfb7e44c735d117c4 is fine.\n")
    _, job = add_source(env.svc, "docs", "orchard", [], [], False)
    env.pump()
    done = env.job(job["id"])
    result = done["result"]
    assert done["state"] == "succeeded", done
    assert result["files_secret"] == 2, result
    assert result["skipped"]["secret"] == 2, result
    source_id = env.svc.sources.of_collection("docs")[0]["id"]
    held = set(env.svc.sources.files(source_id))
    assert "deploy.md" not in held and "tls.py" not in held
    assert "notes.md" in held and set(INDEXED) <= held

    # A held file that gains a secret leaves the collection.
    (tree / "notes.md").write_text(f"# Notes\n\ngithub token ghp_{'a1B2c3D4e5' * 3}abcdef\n")
    job = submit_reconcile(env.svc, env.svc.sources.get(source_id))
    env.pump()
    assert env.job(job["id"])["result"]["files_secret"] == 3  # the two never held are read and counted again
    assert "notes.md" not in set(env.svc.sources.files(source_id))


def test_secret_detection_leaves_the_sample_corpus_alone():
    from pathlib import Path

    from shared.sources.secrets import holds_secret

    corpus = Path(__file__).resolve().parent.parent / "webapp" / "devstack" / "sample_corpus"
    files = [p for p in corpus.rglob("*") if p.is_file()]
    flagged = [p for p in files if holds_secret(p.read_text(errors="replace"))]
    assert len(files) > 250 and flagged == []
    assert holds_secret(FAKE_AWS) and holds_secret(FAKE_PEM) and holds_secret(f"ghp_{'a1B2c3D4e5' * 3}abcdef")


def test_secret_detection_costs_linear_time_on_a_hostile_line():
    """detect-secrets' JWT pattern is quadratic in a line's length (900 KB of "eyJ" took 263 s of CPU,
    holding the GIL, so the worker's keepalive stopped): patterns are matched within bounded pieces."""
    from shared.sources.secrets import holds_secret

    started = time.thread_time()
    assert holds_secret("eyJ" * 300_000) is False
    assert time.thread_time() - started < 20  # CPU seconds; 263 before, about 1 now
    assert holds_secret("a" * 100_000 + "AKIAIOSFODNN7EXAMPLE" + "b" * 10)  # found inside a long line too


def test_a_forged_ivf_quantizer_length_is_refused_before_faiss_reads_it(tmp_path):
    """FAISS allocates an IVF quantizer's centroid table from the length in the file before reading it,
    memory-mapped or not: that length is checked against the file by hand first, so a forged one, even
    with its checksum fixed up, costs nothing (the rebuild falls back to a full build, the API keeps
    what it serves)."""
    import hashlib
    import struct

    import faiss

    from shared.index.vectorindex import INDEX_FILE, KIND_IVF, VerifyFailed, check_index_size, read_index

    dim, nlist = 16, 32
    vectors = np.random.default_rng(0).random((2000, dim), dtype=np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    path = tmp_path / INDEX_FILE
    faiss.write_index(index, str(path))
    checksum = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"kind": KIND_IVF, "vectors": 2000, "dim": dim, "checksum": checksum}
    check_index_size(path, manifest)  # the real file passes
    assert read_index(tmp_path, manifest).ntotal == 2000

    data = bytearray(path.read_bytes())
    honest = struct.pack("<Q", nlist * dim)
    at = data.index(b"IxFI") + 4 + 4 + 8 + 16 + 1 + 4  # the quantizer's header, then its float count
    assert data[at:at + 8] == honest
    data[at:at + 8] = struct.pack("<Q", 1 << 28)  # a 1 GiB centroid table claimed in a 150 KB file
    path.write_bytes(bytes(data))
    forged = {**manifest, "checksum": hashlib.sha256(bytes(data)).hexdigest()}  # checksum fixed up
    with pytest.raises(VerifyFailed, match="quantizer"):
        check_index_size(path, forged)  # what every open of a part (and a format-1 version) calls first


def test_a_forged_sq8_range_table_length_is_refused_before_faiss_reads_it(tmp_path):
    """A compressed (IVF-SQ8) part: after the quantizer, FAISS allocates the 8-bit encoder's range table
    from a length in the file too; a forged one (checksum fixed up) is refused by the same check."""
    import hashlib
    import struct

    import faiss

    from shared.index.vectorindex import INDEX_FILE, KIND_IVF_SQ, VerifyFailed, check_index_size, read_index

    dim, nlist = 16, 32
    vectors = np.random.default_rng(0).random((2000, dim), dtype=np.float32)
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    path = tmp_path / INDEX_FILE
    faiss.write_index(index, str(path))
    manifest = {"kind": KIND_IVF_SQ, "vectors": 2000, "dim": dim,
                "checksum": hashlib.sha256(path.read_bytes()).hexdigest()}
    check_index_size(path, manifest)  # the real file passes
    assert read_index(tmp_path, manifest).ntotal == 2000

    data = bytearray(path.read_bytes())
    ranges = faiss.vector_to_array(faiss.downcast_index(index).sq.trained).astype("<f4").tobytes()
    at = data.index(ranges) - 8  # the range table's float count, just before its floats
    assert data[at:at + 8] == struct.pack("<Q", 2 * dim)
    for claimed in (1 << 28, 2 * dim + 1):  # 1 GiB in a small file; one float more than an 8-bit encoder has
        data[at:at + 8] = struct.pack("<Q", claimed)
        path.write_bytes(bytes(data))
        forged = {**manifest, "checksum": hashlib.sha256(bytes(data)).hexdigest()}
        with pytest.raises(VerifyFailed, match="8-bit encoder"):
            check_index_size(path, forged)
    data[at:at + 8] = struct.pack("<Q", 2 * dim)
    # A hash-table direct map (type 2) makes FAISS read one more length first, from the encoder's fields:
    # with the range statistic at 1, a 2**32-entry table (64 GiB) before a byte of it is read.
    where = at - (8 + 8 + 4 + 4 + 4 + 8 + 1)  # back over code size, d, the statistic's two fields, qtype, the map
    assert data[where] == 0 and data[where + 1:where + 9] == bytes(8)
    data[where] = 2
    data[where + 9 + 4:where + 9 + 8] = struct.pack("<i", 1)
    path.write_bytes(bytes(data))
    with pytest.raises(VerifyFailed, match="direct map"):
        check_index_size(path, {**manifest, "checksum": hashlib.sha256(bytes(data)).hexdigest()})


def test_forged_lengths_in_a_pq4_part_are_refused_before_faiss_reads_them(tmp_path):
    """A PQ4 part (`shared.index.compressed`): FAISS allocates the rotation, the quantizer, the
    codebooks and every fast-scan list from lengths in the file, none of them memory-mapped; each
    forged length (checksum fixed up) is refused by the check every open runs first."""
    import struct

    import faiss

    from shared.index import compressed, ivf
    from shared.index.vectorindex import INDEX_FILE, KIND_IVF_PQ, VerifyFailed, check_index_size, read_index

    dim, nlist, rows = 32, 8, 2000
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    quantizer = faiss.IndexFlatIP(dim)
    faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT).train(vectors)
    index = compressed.pq_train(quantizer, vectors)
    ivf.add_assigned(index, vectors, ivf.assign(quantizer, vectors)[1], 512, lambda done: None)
    path = tmp_path / INDEX_FILE
    faiss.write_index(index, str(path))
    manifest = {"kind": KIND_IVF_PQ, "vectors": rows, "dim": dim}
    check_index_size(path, manifest)  # the real file passes, and FAISS reads it back
    assert read_index(tmp_path, manifest).ntotal == rows
    honest = path.read_bytes()
    rotation = honest.index(b"LTra") + 4 + 1  # after the code and the bias flag: the matrix's float count
    codebooks = honest.index(faiss.vector_to_array(faiss.downcast_index(index.index).pq.centroids)
                             .astype("<f4").tobytes()) - 8
    first_list = honest.index(b"ilbl") + 4 + 32  # the first list's id count
    forgeries = [(rotation, 1 << 28, "rotation"), (rotation, dim * dim + 1, "rotation"),
                 (codebooks, 1 << 28, "4-bit codes"), (first_list, 1 << 28, "list"),
                 (first_list, 0, "list")]
    for at, claimed, refusal in forgeries:
        data = bytearray(honest)
        data[at:at + 8] = struct.pack("<Q", claimed)
        path.write_bytes(bytes(data))
        with pytest.raises(VerifyFailed, match=refusal):
            check_index_size(path, manifest)
    with pytest.raises(VerifyFailed):  # cut short: every length still fits, but the lists end early
        path.write_bytes(honest[:-100])
        check_index_size(path, manifest)
