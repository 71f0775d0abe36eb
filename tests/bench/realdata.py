"""Benchmark data that behaves like real embeddings: measure, fit, compare.

    .venv/bin/python -m tests.bench.realdata measure   # real MiniLM profile -> bench/minilm_profile.json
    .venv/bin/python -m tests.bench.realdata fit       # synthetic vs real at the corpus's size
    .venv/bin/python -m tests.bench.realdata scale     # how the synthetic profile moves with N
    .venv/bin/python -m tests.bench.realdata recall [--rows 200000]   # IVF recall@10 vs nprobe

`measure` chunks the sample corpus as ingest does, embeds it with ONNX fp32 (cached as .npy under
/tmp/swapline-realdata, so only the first run spends minutes) and writes, for the whole set: the
cosine of each vector to its nearest other vector and to its 10th (percentiles and a histogram), the
PCA spectrum, the common mean's length, the near-duplicate rate, and, for the labelled queries
(tests/data/search_queries.json and bench/eval_keps.jsonl), the cosine to the nearest chunk and to the
best chunk of a relevant KEP. `fit` prints the same profile of shared/index/realistic.py's rows at the
corpus's size beside the real one. `recall` builds FAISS IVF (1024 lists) on `clustered` rows, on
`realistic` rows and on the real vectors, and prints recall@10 against exact search at nprobe 1, 4, 16
and 64 for held-out queries.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "bench" / "minilm_profile.json"
CACHE = Path("/tmp/swapline-realdata")
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
BINS = np.round(np.arange(0.0, 1.0001, 0.05), 2)
DUPLICATE = 0.98  # a nearest neighbour this close is a near-copy (template text, repeated sections)


def percentiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(values, p)), 4) for p in PERCENTILES}


def histogram(values: np.ndarray) -> list[float]:
    """Fraction of values per 0.05-wide cosine bin from 0 to 1 (values below 0 count in the first)."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=BINS)
    return [round(float(c) / len(values), 4) for c in counts]


def neighbours(base: np.ndarray, queries: np.ndarray | None = None, k: int = 10) -> np.ndarray:
    """Cosines of the k nearest vectors of `base` to each query (to each row of base, itself left out)."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    if queries is None:
        scores, ids = index.search(base, k + 1)
        own = ids == np.arange(len(base))[:, None]
        # Drop the row itself (or, for an exact duplicate listed first, the last column: same cosines).
        keep = np.where(own.any(axis=1)[:, None], ~own, np.arange(k + 1)[None, :] < k)
        return scores[keep].reshape(len(base), k)
    scores, _ = index.search(queries, k)
    return scores


def spectrum(vectors: np.ndarray) -> dict:
    centred = vectors - vectors.mean(axis=0)
    eigen = np.linalg.eigvalsh(np.cov(centred, rowvar=False))[::-1].clip(min=0)
    ratio = eigen / eigen.sum()
    cumulative = np.cumsum(ratio)
    return {
        "mean_norm": round(float(np.linalg.norm(vectors.mean(axis=0))), 4),
        "explained_top": {str(n): round(float(cumulative[n - 1]), 4) for n in (1, 4, 16, 32, 64, 128, 256)},
        "components_for": {str(f): int(np.searchsorted(cumulative, f) + 1) for f in (0.5, 0.8, 0.9, 0.95)},
        "ratios": [float(f"{r:.4g}") for r in ratio],
    }


def profile(vectors: np.ndarray, sample: int | None = None, seed: int = 0) -> dict:
    """The distribution a benchmark's recall depends on; with `sample`, over that many rows' neighbours
    in the whole set (exact), for sets too big to search all against all."""
    if sample and sample < len(vectors):
        picked = np.sort(np.random.default_rng(seed).choice(len(vectors), sample, replace=False))
        near = neighbours(vectors, vectors[picked], k=11)[:, 1:]  # the first is the row itself
    else:
        near = neighbours(vectors)
    return {
        "rows": len(vectors),
        "nn1": percentiles(near[:, 0]),
        "nn10": percentiles(near[:, 9]),
        "nn1_histogram": histogram(near[:, 0]),
        "near_duplicates": round(float((near[:, 0] >= DUPLICATE).mean()), 4),
        "spectrum": spectrum(vectors if len(vectors) <= 200_000 else vectors[:200_000]),
    }


def real_corpus() -> tuple[list[dict], np.ndarray]:
    """The sample corpus's chunk records and their ONNX fp32 vectors (cached under /tmp)."""
    from shared.index.onnxembed import OnnxMiniLMEmbedder
    from tests.bench.search_modes import corpus_records, embed_cached

    records, texts = corpus_records()
    embedder = OnnxMiniLMEmbedder(CACHE / "models", "fp32", threads=2)
    return records, embed_cached(embedder, texts, CACHE / "cache")


def real_queries() -> list[tuple[str, tuple[str, ...]]]:
    """(query, prefixes of the relevant documents' ids) for every labelled query."""
    from tests.bench.search_modes import load_queries

    out = [(q["query"], tuple(f"keps/{r}/" for r in q["relevant"])) for q in load_queries()]
    for line in (ROOT / "bench" / "eval_keps.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            out.append((item["query"], tuple(item["expect"])))
    return out


def real_query_vectors() -> np.ndarray:
    from shared.index.onnxembed import OnnxMiniLMEmbedder
    from tests.bench.search_modes import embed_cached

    embedder = OnnxMiniLMEmbedder(CACHE / "models", "fp32", threads=2)
    return embed_cached(embedder, [q for q, _ in real_queries()], CACHE / "cache")


def measure() -> dict:
    out = real_profile()
    PROFILE.write_text(json.dumps(out, indent=1) + "\n")
    return out


def real_profile() -> dict:
    """The real model's profile on the sample corpus (what `measure` writes to bench/minilm_profile.json)."""
    started = time.perf_counter()
    records, vectors = real_corpus()
    labelled = real_queries()
    qv = real_query_vectors()
    scores = qv @ vectors.T
    best_relevant = []
    for row, (_, prefixes) in enumerate(labelled):
        mask = np.array([r["doc_id"].startswith(prefixes) for r in records])
        best_relevant.append(float(scores[row, mask].max()) if mask.any() else np.nan)
    relevant = np.array([c for c in best_relevant if not np.isnan(c)])
    out = {
        "about": "Nearest-neighbour cosines of all-MiniLM-L6-v2 (ONNX fp32) vectors of the sample corpus "
                 "(webapp/devstack/sample.py, chunked as ingest does), each row against the whole set; and "
                 "of the labelled queries against it. Written by `python -m tests.bench.realdata measure`.",
        "corpus": profile(vectors),
        "queries": {
            "count": len(labelled),
            "nearest_chunk": percentiles(scores.max(axis=1)),
            "best_relevant_chunk": percentiles(relevant),
            "best_relevant_quantiles": [round(float(np.quantile(relevant, p)), 4) for p in np.linspace(0, 1, 11)],
            "relevant_is_nearest": round(float(np.mean(np.isclose(relevant, scores.max(axis=1)[
                [i for i, c in enumerate(best_relevant) if not np.isnan(c)]]))), 4),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    return out


def side_by_side(real: dict, synthetic: dict) -> None:
    print(f"{'':14}{'real':>48}   {'synthetic':>48}")
    for key in ("nn1", "nn10"):
        line = "  ".join(f"{k}={v:.3f}" for k, v in real[key].items())
        other = "  ".join(f"{k}={v:.3f}" for k, v in synthetic[key].items())
        print(f"{key:6} real  {line}\n{key:6} synth {other}")
    for name, a, b in (("near-dup", real["near_duplicates"], synthetic["near_duplicates"]),
                       ("mean norm", real["spectrum"]["mean_norm"], synthetic["spectrum"]["mean_norm"])):
        print(f"{name:10} real {a:.4f}  synth {b:.4f}")
    print("explained (top n)   real", real["spectrum"]["explained_top"], "\n                    synth",
          synthetic["spectrum"]["explained_top"])


def loss(real: dict, synthetic: dict) -> float:
    """How far a synthetic profile is from the real one: nn1 and nn10 percentiles, near-copies, mean."""
    out = sum(abs(synthetic[k][p] - real[k][p]) for k in ("nn1", "nn10") for p in real[k])
    out += abs(synthetic["near_duplicates"] - real["near_duplicates"])
    return out + abs(synthetic["spectrum"]["mean_norm"] - real["spectrum"]["mean_norm"])


def fit_spectrum(ratios: list[float]) -> tuple[float, float]:
    """(decay, offset) of the power law (i + offset) ** -decay closest to the measured PCA ratios in log
    space, over the components holding 99% of the variance."""
    ratio = np.array(ratios)
    top = int(np.searchsorted(np.cumsum(ratio), 0.99)) + 1
    best = (np.inf, 1.0, 1.0)
    for offset in np.arange(0.0, 40.0, 0.5):
        x, y = np.log(np.arange(top) + offset + 1e-9), np.log(ratio[:top])
        slope, _ = np.polyfit(x, y, 1)
        model = (np.arange(len(ratio)) + offset + 1e-9) ** slope
        err = float(np.mean((np.log(model[:top] / model.sum()) - y) ** 2))
        best = min(best, (err, -slope, offset))
    return round(float(best[1]), 3), float(best[2])


def fit(search: bool) -> dict:
    """The synthetic profile at the corpus's size beside the real one; with `search`, first a coordinate
    search of the shape's parameters (a few minutes), printing the best shape."""
    from dataclasses import replace

    from shared.index.realistic import RealisticVectors, Shape

    real = json.loads(PROFILE.read_text())["corpus"]
    shape = Shape()
    if search:
        decay, offset = fit_spectrum(real["spectrum"]["ratios"])
        shape = replace(shape, spectrum_decay=decay, spectrum_offset=offset)
        print(f"spectrum: decay {decay} offset {offset}", flush=True)

        def score(candidate: Shape) -> float:
            return loss(real, profile(RealisticVectors(candidate).vectors(0, real["rows"])))

        best = score(shape)
        names = ("topic", "doc", "subject", "section", "chunk", "spread", "template_rate", "template_noise",
                 "mean_norm", "base_topics")
        step = 0.4
        for _ in range(3):
            for name in names:
                for factor in (1 + step, 1 / (1 + step)):
                    value = getattr(shape, name) * factor
                    value = int(round(value)) if name == "base_topics" else round(value, 4)
                    candidate = replace(shape, **{name: value})
                    got = score(candidate)
                    if got < best:
                        best, shape = got, candidate
                        print(f"loss {best:.4f} {name}={getattr(shape, name)}", flush=True)
                        break
            step /= 2
        print(shape)
    synthetic = profile(RealisticVectors(shape).vectors(0, real["rows"]))
    side_by_side(real, synthetic)
    print(f"loss {loss(real, synthetic):.4f}")
    return synthetic


def streamed_neighbours(source, n: int, picked: np.ndarray, k: int = 10, size: int = 32_768) -> np.ndarray:
    """Cosines of the k nearest other rows among rows [0, n) to each row in `picked`, exact, reading the
    rows in slices: memory follows the slice, so 10M rows (15.4 GB of floats) never sit in memory."""
    queries = source.rows(picked)
    best = np.full((len(picked), k + 1), -np.inf, dtype=np.float32)
    for lo, vectors in source.slices(0, n, size):
        scores = queries @ vectors.T
        own = (picked >= lo) & (picked < lo + len(vectors))
        scores[np.nonzero(own)[0], picked[own] - lo] = -np.inf  # a row is not its own neighbour
        top = np.partition(scores, -k, axis=1)[:, -k:] if scores.shape[1] > k else scores
        best = np.sort(np.concatenate([best, top], axis=1), axis=1)[:, -k:]
    return best[:, ::-1]


def scale(sizes: tuple[int, ...], sample: int) -> list[dict]:
    """For each N, the NN cosines of `sample` rows drawn from the first N among the first N: the set's
    profile at that size (exact, streamed)."""
    from shared.index.realistic import RealisticVectors

    source, rows = RealisticVectors(), []
    for n in sizes:
        started = time.perf_counter()
        picked = np.sort(np.random.default_rng(0).choice(n, min(n, sample), replace=False))
        near = streamed_neighbours(source, n, picked)
        row = {"rows": n, "nn1": percentiles(near[:, 0]), "nn10": percentiles(near[:, 9]),
               "near_duplicates": round(float((near[:, 0] >= DUPLICATE).mean()), 4),
               "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _spread(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in values.items())


def run(quick: bool) -> list[dict]:
    """The benchmark rows (`make bench`): nearest-neighbour cosine distributions of real all-MiniLM-L6-v2
    vectors of the sample corpus beside `realistic` rows (shared/index/realistic.py) at the corpus's size,
    the queries' nearest-chunk cosines of both, and the realistic rows at 1M and 10M (500 sampled rows'
    exact neighbours, streamed). --quick reads the real side from bench/minilm_profile.json (written by
    `measure`, the same measurement) and scales to 100,000 rows only."""
    from shared.index.realistic import QUERY_COSINES, RealisticVectors
    from tests.bench.common import row

    real = json.loads(PROFILE.read_text()) if quick else real_profile()
    source = RealisticVectors()
    n = real["corpus"]["rows"]
    small = source.vectors(0, n)
    synthetic = profile(small)
    synth_queries, _ = source.queries(np.arange(500), n, QUERY_COSINES)
    synth_nearest = percentiles((synth_queries @ small.T).max(axis=1))
    where = "the sample corpus, ONNX fp32" + (" (bench/minilm_profile.json)" if quick else ", measured in this run")
    out = []
    for key, what in (("nn1", "nearest other vector"), ("nn10", "10th nearest other vector")):
        out += [
            row(f"realdata.real_{key}", f"cosine to the {what} p50, real MiniLM ({n:,} chunks)",
                real["corpus"][key]["p50"], "cosine", note=f"{where}; {_spread(real['corpus'][key])}; near-copies "
                f"(nn1 >= {DUPLICATE}) {real['corpus']['near_duplicates']:.1%}"),
            row(f"realdata.realistic_{key}", f"cosine to the {what} p50, realistic rows ({n:,})",
                synthetic[key]["p50"], "cosine", note=f"{_spread(synthetic[key])}; near-copies "
                f"{synthetic['near_duplicates']:.1%}"),
        ]
    queries = real["queries"]
    out += [
        row("realdata.real_query_nearest", "query -> nearest chunk cosine p50, real labelled queries",
            queries["nearest_chunk"]["p50"], "cosine", note=f"{queries['count']} labelled queries over {n:,} "
            f"chunks; {_spread(queries['nearest_chunk'])}"),
        row("realdata.realistic_query_nearest", "query -> nearest row cosine p50, realistic held-out queries",
            synth_nearest["p50"], "cosine", note=f"500 queries q<k> over {n:,} rows; {_spread(synth_nearest)}"),
    ]
    for scaled in scale((100_000,) if quick else (1_000_000, 10_000_000), sample=500):
        size = f"{scaled['rows'] // 1_000_000}m" if scaled["rows"] >= 1_000_000 else f"{scaled['rows'] // 1000}k"
        for key, what in (("nn1", "nearest other row"), ("nn10", "10th nearest other row")):
            out.append(row(f"realdata.realistic_{key}_{size}", f"cosine to the {what} p50, realistic rows "
                           f"({scaled['rows']:,})", scaled[key]["p50"], "cosine",
                           note=f"500 sampled rows' exact neighbours among all {scaled['rows']:,}, streamed "
                           f"({scaled['seconds']:.0f} s); {_spread(scaled[key])}; near-copies "
                           f"{scaled['near_duplicates']:.1%}"))
    return out


def ivf_recall(vectors: np.ndarray, queries: np.ndarray, lists: int, probes: tuple[int, ...]) -> dict[int, float]:
    """recall@10 of IVF-Flat (inner product) against exact search, per nprobe."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    quantizer = faiss.IndexFlatIP(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(0).choice(len(vectors), min(len(vectors), lists * 40), replace=False)
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    out = {}
    for nprobe in probes:
        index.nprobe = nprobe
        _, found = index.search(queries, 10)
        out[nprobe] = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    return out


def recall(rows: int, count: int = 500, probes: tuple[int, ...] = (1, 4, 16, 64)) -> dict[str, dict[int, float]]:
    from shared.index.embedders import ClusteredEmbedder
    from shared.index.ivf import HELD_OUT_QUERIES, query_probes
    from shared.index.realistic import QUERY_COSINES, RealisticVectors

    table: dict[str, dict[int, float]] = {}
    clustered = ClusteredEmbedder()
    # As tests/bench/million.py does: document "c<cluster> r<i>", queries "c<cluster> q<k>" (held out).
    docs = clustered.embed([f"c{i % clustered.clusters} r{i}" for i in range(rows)])
    queries = clustered.embed([f"c{k * 7919 % clustered.clusters} q{k}" for k in range(count)])
    table[f"clustered {rows:,}"] = ivf_recall(docs, queries, 1024, probes)
    source = RealisticVectors()
    docs = np.concatenate([v for _, v in source.slices(0, rows)])
    queries, _ = source.queries(np.arange(count), rows, QUERY_COSINES)
    table[f"realistic {rows:,}"] = ivf_recall(docs, queries, 1024, probes)
    # The real set is small: its queries are held-out chunks (taken out of the index) and, separately,
    # the 68 labelled queries over the whole set; the synthetic rows of the same size beside them.
    _, real = real_corpus()
    held = np.random.default_rng(1).choice(len(real), count, replace=False)
    kept = np.setdiff1d(np.arange(len(real)), held)
    lists = int(4 * np.sqrt(len(kept)))
    table[f"real MiniLM {len(kept):,}, held-out chunks"] = ivf_recall(real[kept], real[held], lists, probes)
    table[f"real MiniLM {len(real):,}, labelled queries"] = ivf_recall(real, real_query_vectors(), lists, probes)
    # What a build tunes nprobe on (shared/index/ivf.py, query_probes): probes from sampled chunks.
    picked = np.random.default_rng(2).choice(len(real), HELD_OUT_QUERIES, replace=False)
    table[f"real MiniLM {len(real):,}, build's query-like probes"] = ivf_recall(
        real, query_probes(real[picked], 99), lists, probes)
    small = source.vectors(0, len(kept))
    synth_q, _ = source.queries(np.arange(count), len(kept), QUERY_COSINES)
    table[f"realistic {len(kept):,}"] = ivf_recall(small, synth_q, lists, probes)
    table[f"realistic {len(kept):,}, build's query-like probes"] = ivf_recall(
        small, query_probes(small[np.random.default_rng(2).choice(len(small), HELD_OUT_QUERIES, replace=False)], 99),
        lists, probes)
    measured = json.loads(PROFILE.read_text())["queries"]["nearest_chunk"]
    print("query -> nearest chunk cosine, real labelled:", measured)
    print("query -> nearest chunk cosine, realistic:    ", percentiles((synth_q @ small.T).max(axis=1)))
    print(f"{'data':52}" + "".join(f"nprobe {p:<4}" for p in probes))
    for name, row in table.items():
        print(f"{name:52}" + "".join(f"{row[p]:<11.4f}" for p in probes))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.realdata", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("measure", "fit", "scale", "recall"))
    parser.add_argument("--rows", type=int, default=200_000, help="rows for `recall`")
    parser.add_argument("--sizes", default="11846,100000,1000000", help="sizes for `scale`")
    parser.add_argument("--sample", type=int, default=2000, help="rows whose neighbours `scale` measures")
    parser.add_argument("--search", action="store_true", help="`fit`: search the parameters first")
    args = parser.parse_args()
    if args.command == "measure":
        out = measure()
        print(json.dumps({k: v for k, v in out["corpus"].items() if k != "spectrum"}, indent=1))
        print(json.dumps(out["queries"], indent=1))
    elif args.command == "fit":
        fit(args.search)
    elif args.command == "scale":
        scale(tuple(int(s) for s in args.sizes.split(",")), args.sample)
    else:
        recall(args.rows)


if __name__ == "__main__":
    main()
