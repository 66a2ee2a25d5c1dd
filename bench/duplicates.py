"""The duplicates benchmark (`make bench-duplicates`): `python -m client duplicates` on 10k, 100k and 1M vectors,
512-d (CLIP's image vectors) and 384-d (MiniLM's text vectors), exact and indexed, its time and peak memory; the
indexed method's recall against the exact one on a 50,000-vector sample (all its pairs) and on the million (the
pairs of 4,000 sampled rows); and the crossover below which the exact method is faster.

    python -m bench.duplicates                         # everything, into bench/results/duplicates.{md,json}
    python -m bench.duplicates --dimensions 512        # one dimension's rows (the others are kept from the last run)
    python -m bench.duplicates --data-only             # only write the synthetic vectors files (cached in .bench/)
    python -m bench.duplicates --quick --out DIR       # smoke run: small sizes

Each timed run is the command itself in a child process (reading the Parquet file included), its peak memory the
child's maximum resident set size. The exact method at a million vectors would take about an hour: its time in the
table is the 100k row's times 100 (its cost is the number of pairs), marked as an estimate. For the same reason the
recall on the million is measured on a sample of rows: all the exact partners of 4,000 random rows (a matrix product
of those rows with the million) against the indexed method's pairs that involve them (see `million_recall`); that
product's speed gives a second estimate of the exact method's time at a million.

Real embedded vectors are not available at this scale here (embedding a million files takes days on 2 cores), so
the vectors are synthetic (`clustered`), made to be hard for an index where real ones are: they share a common
direction and 1 topic in 1,000, so that unrelated files sit at cosine ~0.3 and files of one topic at ~0.6 (real
CLIP and MiniLM vectors fill a cone, not the whole sphere); 30 % of the files are in clusters of 2 to 8 near
copies whose pairwise cosine is drawn from 0.90–0.995, on both sides of the default threshold; one cluster in five
holds an exact copy (the same sha256 and vector).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from client.index import EXACT_UP_TO, exact_pairs, indexed_pairs, normalized
from client.store import SCHEMA, write_tables
from harness.servers import ROOT

SIZES = [10_000, 100_000, 1_000_000]
DIMENSIONS = [512, 384]
THRESHOLD = 0.95
EXACT_RUN_UP_TO = 100_000
SAMPLE_SIZE = 50_000
SAMPLE_THRESHOLDS = [0.95, 0.9]
CROSSOVER_SIZES = [2_500, 5_000, 10_000, 20_000, 40_000]
QUICK_SIZES, QUICK_SAMPLE, QUICK_CROSSOVER = [2_000], 3_000, [1_000, 2_000]
MILLION = 1_000_000
MILLION_SAMPLED_ROWS = 4_000
QUICK_MILLION, QUICK_SAMPLED_ROWS = 20_000, 500
TARGET_SECONDS = 300
TARGET_RECALL = 0.99
WORK = ROOT / ".bench" / "duplicates"
RESULTS = ROOT / "bench" / "results"
KIND = {512: "image", 384: "text"}


# --- the data ---------------------------------------------------------------------------------------------------


def clustered(n: int, dimension: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit float32 vectors as the module's docstring describes, rows shuffled, and each row's digest number
    (equal for exact copies)."""
    rng = np.random.default_rng([seed, n, dimension])
    directions = rng.standard_normal((n // 1000 + 2, dimension), dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    topics = np.float32(np.sqrt(0.3)) * (directions[0] + directions[1:])  # the common direction, plus each topic's
    grouped = int(0.3 * n)
    sizes = rng.integers(2, 9, grouped // 2)
    sizes = sizes[np.cumsum(sizes) <= grouped]
    sizes = np.concatenate([sizes, np.ones(n - sizes.sum(), dtype=np.int64)])
    clusters = len(sizes)
    cluster_of = np.repeat(np.arange(clusters), sizes)
    # Around a unit centre c, members c + σe (e ~ N(0, I/d), |e| ≈ 1, e·e' ≈ 0) have pairwise cosine ≈ 1 / (1 + σ²).
    similarity = rng.uniform(0.90, 0.995, clusters).astype(np.float32)
    sigma = np.sqrt(1 / similarity - 1) / np.float32(np.sqrt(dimension))
    topic = rng.integers(0, len(topics), clusters)
    vectors = np.empty((n, dimension), dtype=np.float32)
    ends = np.cumsum(sizes)
    first = 0
    while first < clusters:  # about 100,000 rows at a time: bounded temporaries
        last = max(first + 1, int(np.searchsorted(ends, ends[first] + 100_000)))
        start, stop = ends[first] - sizes[first], ends[last - 1]
        centres = topics[topic[first:last]] + np.float32(np.sqrt(0.4 / dimension)) * rng.standard_normal(
            (last - first, dimension), dtype=np.float32
        )
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        local = cluster_of[start:stop] - first
        members = centres[local] + sigma[first:last][local, None] * rng.standard_normal(
            (stop - start, dimension), dtype=np.float32
        )
        vectors[start:stop] = members / np.linalg.norm(members, axis=1, keepdims=True)
        first = last
    digest = np.arange(n)
    copied = np.flatnonzero((sizes > 1) & (rng.random(clusters) < 0.2))
    second = ends[copied] - sizes[copied] + 1  # the cluster's second member becomes a copy of its first
    vectors[second] = vectors[second - 1]
    digest[second] = digest[second - 1]
    order = rng.permutation(n)
    return vectors[order], digest[order]


def vectors_file(n: int, dimension: int, work: Path) -> Path:
    """The synthetic vectors as a Parquet file of the client's schema, written once."""
    path = work / f"clustered-{n}-{dimension}.parquet"
    if path.exists():
        return path
    vectors, digest = clustered(n, dimension)
    work.mkdir(parents=True, exist_ok=True)
    hexes = [hashlib.sha256(int(number).to_bytes(8, "little")).hexdigest() for number in digest]
    offsets = pa.array(np.arange(0, (n + 1) * dimension, dimension, dtype=np.int32))
    table = pa.Table.from_arrays(
        [
            pa.array([f"files/{row // 1000:04d}/{row:07d}.dat" for row in range(n)], pa.string()),
            pa.array([KIND.get(dimension, "image")] * n, pa.string()),
            pa.array(hexes, pa.string()),
            pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel())),
        ],
        schema=SCHEMA,
    )
    temporary = path.with_suffix(".tmp")
    write_tables(temporary, [table])  # as `embed` writes its output
    temporary.rename(path)
    return path


# --- the timed runs ---------------------------------------------------------------------------------------------


def run_command(path: Path, method: str, threshold: float) -> dict:
    """`python -m client duplicates` in a child process: wall time, peak RSS and the groups it printed."""
    command = [sys.executable, "-m", "client", "duplicates", str(path), "--threshold", str(threshold)]
    command += ["--method", method, "--json"]
    output = path.with_suffix(f".{method}.json")
    with output.open("w") as stdout:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
    error = child.stderr.read().decode()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {error[-2000:]}")
    groups = json.loads(output.read_text())
    output.unlink()
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # KiB on Linux
        "groups": len(groups),
        "near_groups": sum(group["kind"] == "near" for group in groups),
        "group_set": sorted(tuple(group["paths"]) for group in groups if group["kind"] == "near"),
    }


def timing_rows(sizes: list[int], dimensions: list[int], work: Path) -> list[dict]:
    rows = []
    for dimension in dimensions:
        for n in sizes:
            path = vectors_file(n, dimension, work)
            row = {"vectors": n, "dimension": dimension, "threshold": THRESHOLD, "file_mib": mib(path.stat().st_size)}
            indexed = run_command(path, "indexed", THRESHOLD)
            row["indexed"] = without_groups(indexed)
            if n <= EXACT_RUN_UP_TO:
                exact = run_command(path, "exact", THRESHOLD)
                row["exact"] = without_groups(exact)
                same = len(set(exact["group_set"]) & set(indexed["group_set"]))
                row["near_groups_identical"] = f"{same} of {len(exact['group_set'])}"
            print(json.dumps(row), flush=True)
            rows.append(row)
    for row in rows:  # the exact method at sizes not run: from the largest run, by the number of pairs
        if "exact" not in row:
            measured = max(
                (other for other in rows if "exact" in other and other["dimension"] == row["dimension"]),
                key=lambda other: other["vectors"],
                default=None,
            )
            if measured:
                factor = (row["vectors"] / measured["vectors"]) ** 2
                row["exact_estimate_s"] = round(measured["exact"]["seconds"] * factor)
    return rows


def without_groups(run: dict) -> dict:
    return {key: value for key, value in run.items() if key != "group_set"}


def mib(size: int) -> int:
    return round(size / 2**20)


# --- recall and the crossover, in-process -----------------------------------------------------------------------


def pair_keys(chunks, n: int, vectors: np.ndarray, threshold: float) -> np.ndarray:
    """The pairs as sorted keys i·n + j, after checking that each is reported once, with i < j, at or over the
    threshold and with the similarity of its vectors' dot product."""
    keys, checked = [], 0
    for pairs in chunks:
        assert (pairs.i < pairs.j).all() and (pairs.similarity >= threshold).all()
        dots = np.einsum("ij,ij->i", vectors[pairs.i], vectors[pairs.j])
        assert np.allclose(dots, pairs.similarity, atol=1e-5)
        keys.append(pairs.i.astype(np.int64) * n + pairs.j)
        checked += len(pairs.i)
    unique = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    assert len(unique) == checked, "a pair reported twice"
    return unique


def recall_row(exact: np.ndarray, indexed: np.ndarray) -> dict:
    found = np.isin(exact, indexed, assume_unique=True).sum()
    return {
        "exact_pairs": len(exact),
        "indexed_pairs": len(indexed),
        "missed": int(len(exact) - found),
        "false": int(len(indexed) - found),
        "recall": round(found / len(exact), 6) if len(exact) else 1.0,
    }


def sample_recall(size: int, dimensions: list[int]) -> list[dict]:
    rows = []
    for dimension in dimensions:
        vectors = normalized(clustered(size, dimension)[0])
        for threshold in SAMPLE_THRESHOLDS:
            exact = pair_keys(exact_pairs(vectors, threshold), size, vectors, threshold)
            indexed = pair_keys(indexed_pairs(vectors, threshold), size, vectors, threshold)
            row = {"vectors": size, "dimension": dimension, "threshold": threshold} | recall_row(exact, indexed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def crossover(sizes: list[int], dimensions: list[int]) -> list[dict]:
    """Seconds to find the pairs (no reading, no grouping) by each method, best of two."""
    rows = []
    for dimension in dimensions:
        for n in sizes:
            vectors = normalized(clustered(n, dimension)[0])
            row = {"vectors": n, "dimension": dimension}
            for name, method in (("exact_s", exact_pairs), ("indexed_s", indexed_pairs)):
                times = []
                for _ in range(2):
                    started = time.perf_counter()
                    for _pairs in method(vectors, THRESHOLD):
                        pass
                    times.append(time.perf_counter() - started)
                row[name] = round(min(times), 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# --- the recall on the million, by sampling ---------------------------------------------------------------------


def million_recall(n: int, dimension: int, sampled_rows: int, thresholds: list[float]) -> list[dict]:
    """The indexed method's recall on `n` vectors, measured on the pairs that involve `sampled_rows` random rows:
    their exact partners come from a matrix product of those rows with all `n` (sampled_rows × n similarities, where
    the exact method computes n²/2), the indexed method runs on all `n`, and its pairs that involve a sampled row are
    compared with them. Every pair is in the sample with the same chance (about 2·sampled_rows/n) whatever its
    similarity, so the share found is an unbiased estimate of the recall over all pairs."""
    vectors = normalized(clustered(n, dimension)[0])
    rng = np.random.default_rng([1, n, dimension])
    sampled = np.sort(rng.choice(n, sampled_rows, replace=False))
    is_sampled = np.zeros(n, dtype=bool)
    is_sampled[sampled] = True
    started = time.perf_counter()
    exact_keys, exact_similarity = partners(vectors, sampled, min(thresholds))
    exact_seconds = time.perf_counter() - started
    rows = []
    for threshold in thresholds:
        started = time.perf_counter()
        indexed = pair_keys(indexed_pairs(vectors, threshold), n, vectors, threshold)
        indexed_seconds = time.perf_counter() - started
        indexed = indexed[is_sampled[indexed // n] | is_sampled[indexed % n]]
        row = {"vectors": n, "dimension": dimension, "threshold": threshold, "sampled_rows": sampled_rows}
        row |= recall_row(exact_keys[exact_similarity >= threshold], indexed)
        # The sampled rows' product is the exact method's tiles for a sampled_rows/(n/2) share of its pairs.
        row |= {"sampled_exact_s": round(exact_seconds, 1), "indexed_s": round(indexed_seconds, 1)}
        row["exact_estimate_s"] = round(exact_seconds * (n / 2) / sampled_rows)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def partners(vectors: np.ndarray, rows: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of one of `rows` and any other row at or over `threshold`, as sorted unique keys i·n + j (i < j),
    and their similarities."""
    n = len(vectors)
    keys, similarities = [], []
    for top in range(0, len(rows), 1024):
        queries = rows[top : top + 1024]
        query_vectors = vectors[queries]
        for left in range(0, n, 16384):  # 1024 × 16384 similarities at a time: 64 MiB
            block = query_vectors @ vectors[left : left + 16384].T
            row, column = np.divmod(np.flatnonzero(block >= threshold), block.shape[1])
            a, b = queries[row], left + column
            other = a != b
            keys.append(np.minimum(a, b)[other].astype(np.int64) * n + np.maximum(a, b)[other])
            similarities.append(block[row[other], column[other]])
    # A pair of two sampled rows comes twice.
    unique, first = np.unique(np.concatenate(keys), return_index=True)
    return unique, np.concatenate(similarities)[first]


# --- the report -------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = [
        "# `python -m client duplicates`: exact and indexed",
        "",
        f"{results['machine']}, {results['date']}. Synthetic clustered vectors (bench/duplicates.py), threshold "
        f"{THRESHOLD}. Each run is the command in a child process, Parquet reading included; memory is its peak RSS.",
        "",
        "| vectors | dim | file | indexed | indexed peak RSS | exact | exact peak RSS | near groups | same near groups "
        "|",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in results["timings"]:
        exact = row.get("exact")
        exact_time = f"{exact['seconds']:.1f} s" if exact else f"≈ {row.get('exact_estimate_s', 0) / 60:.0f} min (est.)"
        exact_peak = f"{exact['peak_rss_mib']:,} MiB" if exact else "–"
        lines.append(
            f"| {row['vectors']:,} | {row['dimension']} | {row['file_mib']:,} MiB | {row['indexed']['seconds']:.1f} s "
            f"| {row['indexed']['peak_rss_mib']:,} MiB | {exact_time} | "
            f"{exact_peak} | {row['indexed']['near_groups']:,} | "
            f"{row.get('near_groups_identical', '–')} |"
        )
    lines += [
        "",
        "Recall of the indexed method: the share of the exact method's pairs at or over the threshold that it finds "
        "(no reported pair is below the threshold: each is the vectors' own float32 dot product, checked here). On "
        "the 50,000-vector sample, all pairs, the exact method's tiles against the index. On the million, the pairs "
        "that involve a random sample of rows: their exact partners from one matrix product of those rows with all "
        "the million vectors, against the indexed method's pairs (run on the whole million) that involve them; each "
        "pair is in the sample with the same chance, so this estimates the recall over all pairs.",
        "",
        "| vectors | dim | threshold | pairs compared | exact pairs | indexed pairs | missed | false | recall |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in recall_rows(results):
        compared = f"of {row['sampled_rows']:,} sampled rows" if "sampled_rows" in row else "all"
        lines.append(
            f"| {row['vectors']:,} | {row['dimension']} | {row['threshold']} | {compared} | {row['exact_pairs']:,} | "
            f"{row['indexed_pairs']:,} | {row['missed']:,} | {row['false']} | {row['recall']:.4%} |"
        )
    for row in results.get("million_recall", []):
        if row["threshold"] == THRESHOLD:
            lines += [
                "",
                f"At {row['vectors']:,} × {row['dimension']}-d the sampled rows' exact product took "
                f"{row['sampled_exact_s']:.0f} s: at that rate the exact method's {row['vectors']:,}²/2 pairs would "
                f"take ≈ {row['exact_estimate_s'] / 60:.0f} min (estimated, not run).",
            ]
    lines += [
        "",
        f"Crossover: seconds to find the pairs, best of two (`EXACT_UP_TO` = {EXACT_UP_TO:,}: the exact method up to "
        "there).",
        "",
        "| vectors | dim | exact | indexed |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for row in results["crossover"]:
        lines.append(f"| {row['vectors']:,} | {row['dimension']} | {row['exact_s']:.2f} s | {row['indexed_s']:.2f} s |")
    lines += ["", "Targets:", ""]
    lines += [f"- {target['name']}: **{target['status']}** ({target['value']})" for target in targets(results)]
    return "\n".join(lines) + "\n"


def targets(results: dict) -> list[dict]:
    million = [row for row in results["timings"] if row["vectors"] == MILLION]
    recalls = recall_rows(results)
    found = []
    for row in million:
        seconds = row["indexed"]["seconds"]
        found.append(
            {
                "name": f"1M {row['dimension']}-d vectors in ≤ {TARGET_SECONDS} s",
                "status": "PASS" if seconds <= TARGET_SECONDS else "FAIL",
                "value": f"{seconds:.0f} s",
            }
        )
    if recalls:
        worst = min(recalls, key=lambda row: row["recall"])
        found.append(
            {
                "name": f"recall ≥ {TARGET_RECALL:.0%} wherever measured",
                "status": "PASS" if worst["recall"] >= TARGET_RECALL else "FAIL",
                "value": f"lowest {worst['recall']:.4%}: {worst['vectors']:,} × {worst['dimension']}-d, "
                f"threshold {worst['threshold']}",
            }
        )
        false = sum(row["false"] for row in recalls)
        found.append({"name": "no false pair", "status": "PASS" if false == 0 else "FAIL", "value": f"{false} false"})
    return found


def recall_rows(results: dict) -> list[dict]:
    return results["recall"] + results.get("million_recall", [])


def write(results: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (out / f"{name}.md").write_text(report)
    print(f"\n{report}\nwrote {out / name}.json and .md")


def previous(out: Path, name: str) -> dict:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dimensions", default=",".join(map(str, DIMENSIONS)), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--data-only", action="store_true", help="write the vectors files and stop")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    dimensions = [int(value) for value in args.dimensions.split(",")]
    name = "duplicates-quick" if args.quick else "duplicates"
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.data_only:
        for dimension in dimensions:
            for n in sizes:
                print(vectors_file(n, dimension, args.work))
        return 0
    results = previous(args.out, name)
    million, sampled_rows = (QUICK_MILLION, QUICK_SAMPLED_ROWS) if args.quick else (MILLION, MILLION_SAMPLED_ROWS)

    def kept(key: str) -> list[dict]:  # the rows of the dimensions not run now, from the last run
        return [row for row in results.get(key, []) if row["dimension"] not in dimensions]

    results |= {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": datetime.date.today().isoformat(),
        "timings": kept("timings") + timing_rows(sizes, dimensions, args.work),
        "recall": kept("recall") + sample_recall(QUICK_SAMPLE if args.quick else SAMPLE_SIZE, dimensions),
        "crossover": kept("crossover") + crossover(QUICK_CROSSOVER if args.quick else CROSSOVER_SIZES, dimensions),
        "million_recall": kept("million_recall")
        + [row for d in dimensions for row in million_recall(million, d, sampled_rows, SAMPLE_THRESHOLDS)],
    }
    results["targets"] = targets(results)
    write(results, args.out, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
