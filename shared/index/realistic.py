"""Synthetic vectors shaped like all-MiniLM-L6-v2's on real text, for benchmarks at a million rows and
more (SWAPLINE_EMBEDDER=realistic, and `RealisticVectors.slices` for benches that write vectors directly).

A hierarchy in a 384-d latent space whose variance falls off like MiniLM's measured PCA spectrum (a
power law fitted to it), rotated by a fixed random orthogonal matrix and shifted by a common direction
(sentence embeddings share one), then normalized:

    row = normalize(mean + R @ (sqrt(spectrum) * (topic + document + subject + section + chunk)))

Row i is chunk i of document i // 40, in section i // 4. A document picks a topic; each section picks
one of its topic's few subjects (so sections of different documents can say the same thing), and its
section and chunk noise are scaled by a per-section tightness; some rows are near-copies of a template
shared across documents (KEPs repeat their template's sections). The parameters were fitted so the
nearest-neighbour cosines (1st and 10th) at the sample corpus's size match those measured on real
MiniLM vectors: `python -m tests.bench.realdata measure`, then `fit --search`; both tables are printed
by `fit` and the real one is bench/minilm_profile.json.

Growth with N, the assumption: topics (and templates) grow like Heaps' law, sqrt(N): a document picks
its topic uniformly among the topics that exist at its position, so a bigger set is broader and each
topic also holds more documents (sqrt(N)), whose sections share the topic's subjects: neighbours get
closer with N, as in more text of the same kind. Any prefix of the rows is itself a set of that size,
so row i is the same vector whatever N a bench asks for, and "doc-<i>" embeds to row i everywhere.

Deterministic (numpy's PCG64 seeded per block, a splitmix64 hash per index) and generated in blocks of
BLOCK rows: a slice is cut from whole blocks, so any slicing of a range equals the range made at once,
and 10M rows (15.4 GB of floats) never need to be in memory together.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from shared.index import ivf
from shared.index.tokens import WORDS

BLOCK = 1024  # rows (and centres of each level) drawn together from one seeded generator
_TOPIC, _DOC, _SECTION, _CHUNK, _TEMPLATE, _QUERY, _BASIS, _SUBJECT = range(8)
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
# Where real queries sit from what they seek, as (probability, cosine) deciles (measured: ivf.QUERY_COSINES).
QUERY_COSINES = ivf.QUERY_COSINES
# In the data dir: held-out query vectors a bench wrote ahead (`write_query_table`), which the realistic
# embedder answers "q<k>:<n>" from instead of making each (a whole block of rows, tens of ms of CPU in the
# API process before every search).
QUERY_TABLE = "realistic-queries.npz"


def _splitmix(values: np.ndarray, salt: int) -> np.ndarray:
    """A 64-bit hash of each index (splitmix64's finalizer), salted; uint64 arithmetic wraps."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & _MASK


def _uniform(values: np.ndarray, salt: int) -> np.ndarray:
    return (_splitmix(values, salt) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normal(values: np.ndarray, salt: int) -> np.ndarray:
    """One standard normal per index (Box-Muller over two hashed uniforms)."""
    radius = np.sqrt(-2.0 * np.log1p(-_uniform(values, salt)))
    return radius * np.cos(2.0 * np.pi * _uniform(values, salt + 1))


@dataclass(frozen=True)
class Shape:
    """The generator's parameters. Defaults are `python -m tests.bench.realdata fit --search`'s result on
    the sample corpus (11,846 chunks of 295 KEPs, ONNX fp32 vectors), spectrum fitted first."""

    dim: int = 384
    chunks_per_doc: int = 40  # the sample: 11,846 chunks / 295 KEPs
    chunks_per_section: int = 4
    base_docs: int = 295  # the size the topic count below was fitted at
    base_topics: int = 55
    base_templates: int = 60
    subjects_per_topic: int = 8  # what a section is about: sections of different documents share them
    growth: float = 0.5  # topics and templates grow like (docs / base_docs) ** growth
    # Shares of the latent variance per level (they sum to 1).
    topic: float = 0.2475
    doc: float = 0.0769
    subject: float = 0.1636
    section: float = 0.2218
    chunk: float = 0.25
    template_rate: float = 0.035  # rows that are a near-copy of a shared template
    template_noise: float = 0.1375  # a template copy's own noise, relative to a chunk's
    # Sections differ in how tight they are (a table of flags against free prose): the section and chunk
    # noise of a section is scaled by exp(spread * z), z standard normal per section.
    spread: float = 0.3928
    mean_norm: float = 0.9  # the common direction's length against a unit spread
    spectrum_decay: float = 2.267  # eigenvalue i ~ (i + spectrum_offset) ** -spectrum_decay
    spectrum_offset: float = 39.5
    seed: int = 2026

    def shares(self) -> np.ndarray:
        parts = np.array([self.topic, self.doc, self.subject, self.section, self.chunk], dtype=np.float64)
        return parts / parts.sum()


@dataclass
class RealisticVectors:
    """Row i of an unbounded, deterministic set of MiniLM-like unit vectors; queries held out beside it."""

    shape: Shape = field(default_factory=Shape)
    _cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _last: tuple[int, np.ndarray] | None = field(default=None, init=False, repr=False)

    @cached_property
    def _scale(self) -> np.ndarray:
        s = self.shape
        eigen = (np.arange(s.dim, dtype=np.float64) + s.spectrum_offset) ** -s.spectrum_decay
        return np.sqrt(eigen / eigen.sum()).astype(np.float32)

    @cached_property
    def _basis(self) -> np.ndarray:
        rng = np.random.default_rng([self.shape.seed, _BASIS])
        q, r = np.linalg.qr(rng.standard_normal((self.shape.dim, self.shape.dim)))
        q *= np.sign(np.diag(r))  # a unique Q (QR leaves column signs free)
        return q.astype(np.float32)

    @cached_property
    def _mean(self) -> np.ndarray:
        rng = np.random.default_rng([self.shape.seed, _BASIS, 1])
        direction = rng.standard_normal(self.shape.dim)
        return (self.shape.mean_norm * direction / np.linalg.norm(direction)).astype(np.float32)

    def _gauss(self, level: int, index: np.ndarray) -> np.ndarray:
        """Standard normal latent vectors of `level` at `index`; each block of BLOCK indices comes from
        one generator, so the vector of an index never depends on which others are asked for."""
        out = np.empty((len(index), self.shape.dim), dtype=np.float32)
        blocks = index // BLOCK
        for block in np.unique(blocks):
            rows = np.nonzero(blocks == block)[0]
            out[rows] = self._normals(level, int(block))[index[rows] % BLOCK]
        return out

    def _normals(self, level: int, block: int) -> np.ndarray:
        # Rows walk forward, so a document's or a section's block serves many row blocks: keep a few.
        key = (level, block)
        if key not in self._cache:
            if len(self._cache) >= 16:
                del self._cache[next(iter(self._cache))]
            rng = np.random.default_rng([self.shape.seed, level, block])
            self._cache[key] = rng.standard_normal((BLOCK, self.shape.dim), dtype=np.float32)
        return self._cache[key]

    def _count(self, base: int, docs: np.ndarray) -> np.ndarray:
        """How many topics (or templates) exist when document `docs` is written: base at base_docs."""
        grown = base * ((docs + 1.0) / self.shape.base_docs) ** self.shape.growth
        return np.maximum(1, np.ceil(grown)).astype(np.int64)

    def topics(self, docs: np.ndarray) -> np.ndarray:
        """The topic of each document: uniform among the topics that exist at its position."""
        return (_uniform(docs, _TOPIC) * self._count(self.shape.base_topics, docs)).astype(np.int64)

    def _anchors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The topic and the subject of each row."""
        s = self.shape
        topics = self.topics(rows // s.chunks_per_doc)
        pick = _splitmix(rows // s.chunks_per_section, _SUBJECT) % np.uint64(s.subjects_per_topic)
        return topics, topics * s.subjects_per_topic + pick.astype(np.int64)

    def _latent(self, rows: np.ndarray) -> np.ndarray:
        s, share = self.shape, np.sqrt(self.shape.shares()).astype(np.float32)
        docs = rows // s.chunks_per_doc
        sections = rows // s.chunks_per_section
        tightness = np.exp(s.spread * _normal(sections, _SECTION)).astype(np.float32)[:, None]
        topics, subjects = self._anchors(rows)
        latent = share[0] * self._gauss(_TOPIC, topics)
        latent += share[1] * self._gauss(_DOC, docs)
        latent += share[2] * self._gauss(_SUBJECT, subjects)
        latent += share[3] * tightness * self._gauss(_SECTION, sections)
        chunk = tightness * self._gauss(_CHUNK, rows)
        copies = _uniform(rows, _TEMPLATE) < s.template_rate
        if copies.any():
            pool = self._count(s.base_templates, docs[copies])
            which = (_uniform(rows[copies], _TEMPLATE + 100) * pool).astype(np.int64)
            # A template copy is the template, whatever document holds it, plus a little of its own.
            latent[copies] = self._gauss(_TEMPLATE, which) + s.template_noise * chunk[copies]
            chunk[copies] = 0.0
        latent += share[4] * chunk
        return latent

    def _finish(self, latent: np.ndarray) -> np.ndarray:
        out = (latent * self._scale) @ self._basis.T + self._mean
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    def _block(self, block: int) -> np.ndarray:
        # An ingest batch of "doc-<i>" texts is a run of rows: keep the last block finished.
        # One read of the pair: request threads share the embedder and may each replace it.
        last = self._last
        if last is None or last[0] != block:
            rows = np.arange(block * BLOCK, (block + 1) * BLOCK, dtype=np.int64)
            last = self._last = (block, self._finish(self._latent(rows)))
        return last[1]

    def vectors(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 (stop - start) x dim, the same whatever slices they are cut in."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad row range [{start}, {stop})")
        out = np.empty((stop - start, self.shape.dim), dtype=np.float32)
        for block in range(start // BLOCK, -(-stop // BLOCK)):
            lo, hi = max(start, block * BLOCK), min(stop, (block + 1) * BLOCK)
            out[lo - start:hi - start] = self._block(block)[lo - block * BLOCK:hi - block * BLOCK]
        return out

    def slices(self, start: int, stop: int, size: int = 64 * BLOCK):
        """(first row, vectors) slices of at most `size` rows covering [start, stop), for writing 10M
        rows with memory for one slice."""
        for lo in range(start, stop, size):
            yield lo, self.vectors(lo, min(stop, lo + size))

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Arbitrary rows (each computed in its whole block, so equal to the same rows of `vectors`)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape.dim), dtype=np.float32)
        blocks = rows // BLOCK
        for block in np.unique(blocks):
            where = np.nonzero(blocks == block)[0]
            out[where] = self._block(int(block))[rows[where] % BLOCK]
        return out

    def queries(self, keys: np.ndarray, among: int, cosines: tuple[tuple[float, ...], tuple[float, ...]]
                ) -> tuple[np.ndarray, np.ndarray]:
        """Held-out query vectors `keys` over rows [0, among): query k aims at a row t_k and has cosine
        c_k to it, c_k drawn from `cosines` ((probabilities, values): the measured quantiles of real
        query -> relevant-chunk cosines), moved off t_k in a direction shaped like the data's spread.
        Returns (queries, target rows); no query is a stored row."""
        keys = np.asarray(keys, dtype=np.int64)
        targets = (_uniform(keys, _QUERY) * among).astype(np.int64)
        base = self.rows(targets)
        cos = np.interp(_uniform(keys, _QUERY + 1), cosines[0], cosines[1]).astype(np.float32)
        # Away from the target along a fresh draw of the data's spread, without the common direction:
        # with it, queries sit nearer the crowd than to their target (nearest-chunk cosine 0.73 where real
        # queries have 0.55); kept within the target's topic, IVF finds them more easily than real ones
        # at nprobe 16-64. This choice matches the real nearest-chunk cosines within 0.05 from p5 to p99.
        away = (self._gauss(_QUERY, keys) * self._scale) @ self._basis.T
        away -= (away * base).sum(axis=1, keepdims=True) * base
        away /= np.maximum(np.linalg.norm(away, axis=1, keepdims=True), 1e-12)
        out = cos[:, None] * base + np.sqrt(np.maximum(0.0, 1.0 - cos**2))[:, None] * away
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32), targets


def write_query_table(path: Path, keys: np.ndarray, among: int) -> None:
    """Held-out queries `keys` over rows [0, among), made as `RealisticVectors.queries` makes them, into
    `path` (written aside and renamed, so a reader never sees half of it)."""
    keys = np.asarray(keys, dtype=np.int64)
    vectors, _ = RealisticVectors().queries(keys, among, QUERY_COSINES)
    aside = path.with_name(path.name + ".part.npz")
    np.savez(aside, keys=keys, among=np.int64(among), vectors=vectors)
    os.replace(aside, path)


class RealisticEmbedder:
    """SWAPLINE_EMBEDDER=realistic: "doc-<i>" (or "r<i>") embeds to row i of RealisticVectors; "q<k>"
    to held-out query k over the first 10M rows and "q<k>:<n>" over the first n (a perturbed row, never
    a stored one); any other text to the row its blake2b digest picks among the first 10M. Not a
    language model: texts that share words are not close.

    `query_table` (the data dir's QUERY_TABLE, from `make_embedder`): when that file is there at the first
    query embedded, the queries it holds are answered from it, the same vectors without the CPU."""

    PATTERN = re.compile(r"^(?:doc-|r)(\d{1,12})$|^q(\d{1,12})(?::(\d{1,12}))?$")
    HASHED_ROWS = 10_000_000

    def __init__(self, dim: int = 384, query_table: Path | None = None):
        if dim != 384:
            raise ValueError(f"the realistic embedder is 384-d, as MiniLM is, not {dim}")
        self.dim = dim
        self.model_id = f"realistic-{dim}"
        self.tokenizer = WORDS
        self.source = RealisticVectors()
        self._table_path = query_table
        self._table: dict[tuple[int, int], np.ndarray] | None = None

    def _tabled(self) -> dict[tuple[int, int], np.ndarray]:
        """(key, among) -> query vector from the query table, read once (empty without one)."""
        if self._table is None:
            table = {}
            if self._table_path is not None and self._table_path.is_file():
                with np.load(self._table_path) as data:
                    among = int(data["among"])
                    table = {(int(k), among): v for k, v in zip(data["keys"], data["vectors"], strict=True)}
            self._table = table
        return self._table

    def embed(self, texts: list[str]) -> np.ndarray:
        rows, queries, among = [], [], []
        for position, text in enumerate(texts):
            match = self.PATTERN.match(text.strip())
            if match and match.group(2) is not None:
                queries.append((position, int(match.group(2))))
                among.append(int(match.group(3)) if match.group(3) else self.HASHED_ROWS)
            elif match:
                rows.append((position, int(match.group(1))))
            else:
                digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
                rows.append((position, int.from_bytes(digest, "little") % self.HASHED_ROWS))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if rows:
            out[[p for p, _ in rows]] = self.source.rows(np.array([r for _, r in rows], dtype=np.int64))
        for (position, key), n in zip(queries, among, strict=True):
            tabled = self._tabled().get((key, max(1, n)))
            out[position] = tabled if tabled is not None else \
                self.source.queries(np.array([key]), max(1, n), QUERY_COSINES)[0][0]
        return out
