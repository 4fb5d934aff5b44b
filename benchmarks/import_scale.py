"""Streaming import of large interaction files: seconds and peak memory against the row count.

    python -m benchmarks.import_scale [--rows 1000000 10000000] [--formats csv parquet] [--runs 5]

For each N, writes a CSV (``user,item,rating,timestamp``) and a Parquet file of N rows to
``--work-dir`` chunk by chunk (never N rows in memory): N/50 users, N/500 items (at least 100
each), ratings 0.5..5, increasing timestamps. Each import runs in a fresh Python process
(``Store.init`` + ``Store.import_file`` under ``GROVE_IMPORT_MEMORY``, default 2GB) that reports
its import seconds, its resident memory before the import (Python, grove, DuckDB loaded), its
peak resident memory (``ru_maxrss``) and then whether the stored rows kept the file's order (the
timestamps count up by one); the parent also keeps ``os.wait4``'s peak of the whole child.
Seconds are the median of ``--runs`` imports (5) up to 10^7 rows and of ``--big-runs`` (1)
above, each a cold process reading a file just written (in the page cache when it fits). Files
and stores are deleted after each N. Writes ``results/import_scale.json`` and ``.md``; the
target is a peak that stays flat in N (well under 3 GB at 10^8 rows)."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pv
import pyarrow.parquet as pq

from benchmarks.machine import machine_info
from benchmarks.output import write_json_and_markdown
from benchmarks.timing import at_least

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CHUNK = 1_000_000  # rows generated and written at a time
BIG = 10_000_000  # above this many rows, --big-runs imports instead of --runs
CHILD = """
import json, resource, sys, time
from grove.indexstore.file_layout import InteractionFile
from grove.indexstore.store import Store
def hwm_mb():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
url = 'duckdb:///' + sys.argv[2]
Store.init(url)
store = Store.open(url)
before = hwm_mb()
t = time.perf_counter()
info = store.import_file('bench', InteractionFile(sys.argv[1]))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import duckdb, numpy as np  # after the peak: file order kept? (the files' timestamps count up)
con = duckdb.connect(sys.argv[2], read_only=True)
ts = con.execute('SELECT ts FROM interactions').fetchnumpy()['ts']
print(json.dumps({'seconds': seconds, 'rss_before_mb': before, 'peak_rss_mb': peak,
                  'n_interactions': info.n_interactions, 'n_users': info.n_users,
                  'n_items': info.n_items, 'file_order_kept': bool(np.all(np.diff(ts) == 1))}))
"""


def chunks(n: int, seed: int):
    """Record batches of at most CHUNK rows; ids drawn uniformly, timestamps increasing."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n // 50, 100), max(n // 500, 100)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        yield pa.record_batch(
            {
                "user": rng.integers(1, n_users + 1, m),
                "item": rng.integers(1, n_items + 1, m),
                "rating": rng.integers(1, 11, m) / 2.0,
                "timestamp": 1_000_000_000 + np.arange(start, start + m, dtype=np.int64),
            }
        )


def write_files(n: int, folder: pathlib.Path, formats: list[str], seed: int) -> dict:
    """{format: (path, bytes, seconds to write)}; one pass over the chunks per format."""
    out = {}
    for fmt in formats:
        path = folder / f"ratings_{n}.{fmt}"
        t = time.perf_counter()
        schema = next(chunks(1, seed)).schema
        writer = pv.CSVWriter(path, schema) if fmt == "csv" else pq.ParquetWriter(path, schema, compression="snappy")
        with writer:
            for batch in chunks(n, seed):
                writer.write_batch(batch)
        out[fmt] = (path, path.stat().st_size, time.perf_counter() - t)
    return out


def import_once(path: pathlib.Path, store: pathlib.Path, memory: str) -> dict:
    """Import ``path`` into a new store in a fresh process; its report plus wait4's peak."""
    env = {**os.environ, "GROVE_IMPORT_MEMORY": memory, "OMP_NUM_THREADS": "1"}
    root = pathlib.Path(__file__).resolve().parents[1]
    t = time.perf_counter()
    with open(store.with_suffix(".stderr"), "w+") as err:  # a file: the child's exit noise is long
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(store)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"import of {path} failed ({proc.returncode}): {err.read()[-2000:]}")
    report = json.loads(out.strip().splitlines()[-1])
    report["process_s"] = time.perf_counter() - t
    report["store_bytes"] = store.stat().st_size
    report["wait4_peak_rss_mb"] = usage.ru_maxrss / 1024  # includes the order check's array
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def run_size(n: int, formats: list[str], runs: int, memory: str, work: pathlib.Path, seed: int) -> list[dict]:
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f"import-{n}-", dir=work))
    rows = []
    try:
        files = write_files(n, folder, formats, seed)
        for fmt, (path, size, gen_s) in files.items():
            reports = []
            for r in range(runs):
                store = folder / f"store_{fmt}_{r}.duckdb"
                reports.append(import_once(path, store, memory))
                assert reports[-1]["n_interactions"] == n and reports[-1]["file_order_kept"], reports[-1]
                for leftover in folder.glob(f"store_{fmt}_{r}.*"):  # store, WAL, spill folder, stderr
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
                print(
                    f"{n:,} rows {fmt}: {reports[-1]['seconds']:.1f}s, peak {reports[-1]['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            rows.append(
                {
                    "rows": n,
                    "format": fmt,
                    "file_bytes": size,
                    "generate_s": gen_s,
                    "seconds": statistics.median(x["seconds"] for x in reports),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in reports),
                    "file_order_kept": all(x["file_order_kept"] for x in reports),
                    "rss_before_mb": statistics.median(x["rss_before_mb"] for x in reports),
                    "runs": reports,
                }
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Streaming import: seconds and peak memory by rows (GROVE_IMPORT_MEMORY={res['memory']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['cpu_model']}), load average before "
        f"{m['load_average_before']}, after {m['load_average_after']}; duckdb {m['duckdb']}. "
        f"Each import in a fresh process; seconds are the median of the runs, peak RSS their "
        f"maximum. Command: `{res['command']}`.",
        "",
        "| rows | format | file MB | runs | import s | rows/s | RSS before import MB | peak RSS MB | store MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        store = statistics.median(x["store_bytes"] for x in r["runs"]) / 2**20
        lines.append(
            f"| {r['rows']:,} | {r['format']} | {r['file_bytes'] / 2**20:,.0f} | {len(r['runs'])} "
            f"| {r['seconds']:.1f} "
            f"| {r['rows'] / r['seconds']:,.0f} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {store:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=at_least(1), nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    ap.add_argument("--runs", type=at_least(1), default=5, help="imports per size and format up to 10^7 rows (median)")
    ap.add_argument("--big-runs", type=at_least(1), default=1, help="the same above 10^7 rows")
    ap.add_argument("--memory", default="2GB", help="GROVE_IMPORT_MEMORY of the importing process")
    ap.add_argument("--work-dir", default=None, help="where the files and stores go (default: $TMPDIR)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "import_scale"), help="results stem (.json, .md)")
    a = ap.parse_args(argv)
    import duckdb

    res = {
        "command": " ".join(["python -m benchmarks.import_scale", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(duckdb=duckdb.__version__),
        "memory": a.memory,
        "rows": [],
    }
    work = pathlib.Path(a.work_dir or tempfile.gettempdir())
    for n in a.rows:
        runs = a.runs if n <= BIG else a.big_runs
        res["rows"] += run_size(n, a.formats, runs, a.memory, work, a.seed)
    res["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_and_markdown(a.out, res, markdown)
    print(markdown(res))
    return res


if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
