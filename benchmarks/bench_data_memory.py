"""Resident memory of the GRPO data path per 1,000 rows: does it grow with the number of rows?

What: writes a VisionThink-schema parquet file (`images` list, `problem`, `original_answer`, `info` with target
sizes; noisy RGB images so PNG cannot shrink them to nothing), then, each in a FRESH process (so one measurement's
allocator state cannot leak into the next), builds the GRPO rows for N rows (500 and 2,000 by default) with
`adaptune.rl.data.load_grpo_rows` and reads every row once the way a training epoch does. It prints the resident set
size (RSS) after each stage and the growth from N=500 to N=2000 per 1,000 rows, next to the same growth for the
old path (a Python list of decoded low + full images per row, what `to_grpo_rows` held before it was built on
`Dataset.map`), measured the same way.

Why: VisionThink's training sets hold ~10k real images; a list of decoded PIL images costs several GB per process
(each data-parallel rank holds its own). Arrow-backed rows with encoded images, memory-mapped from the cache file,
keep resident memory flat in the number of rows.

    python benchmarks/bench_data_memory.py                       # 2,000 rows of 448x448 images
    python benchmarks/bench_data_memory.py --rows 200 --side 96  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> tuple[float, float]:
    """(resident set size, its anonymous part) of this process in MiB. The anonymous part is memory the process
    holds itself; the rest of RSS is file pages (the memory-mapped Arrow cache) the kernel can drop at any time."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields.get("RssAnon", fields["VmRSS"])


def write_parquet(path: Path, rows: int, side: int) -> None:
    """A VisionThink-schema parquet file with `rows` noisy `side` x `side` PNG images."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features({
        "images": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
        "original_answer": datasets.Value("string"), "solution": datasets.Value("string"),
        "info": {"tgt_width": datasets.Value("int64"), "tgt_height": datasets.Value("int64"),
                 "use_tool": datasets.Value("bool")},
        "doc_id": datasets.Value("int64")})

    def chunk(start: int, stop: int) -> datasets.Dataset:
        images = []
        for _ in range(start, stop):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8) // 16 * 16  # noisy, partly compressible
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            images.append([{"bytes": buf.getvalue(), "path": None}])
        n = stop - start
        return datasets.Dataset.from_dict({
            "images": images, "problem": [f"What is in region {i}?" for i in range(start, stop)],
            "original_answer": ["a"] * n, "solution": ["<answer>a</answer>"] * n,
            "info": [{"tgt_width": side // 2, "tgt_height": side // 2, "use_tool": i % 2 == 0}
                     for i in range(start, stop)],
            "doc_id": list(range(start, stop))}, features=features)

    parts = [chunk(s, min(rows, s + 250)) for s in range(0, rows, 250)]
    datasets.concatenate_datasets(parts).to_parquet(str(path))


def measure(path: str, rows: int, mode: str) -> dict[str, float]:
    """In this process: RSS before, after building the GRPO rows (`mode`: arrow | list) and after reading them all."""
    import datasets

    from adaptune.rl.data import DataParams, load_grpo_rows, source_dataset, to_grpo_rows

    datasets.disable_progress_bars()
    params = DataParams(dataset={"path": path, "schema": "visionthink"}, num_samples=rows)
    source_dataset(params, num=1)  # imports and the parquet -> Arrow cache, outside the measurement
    before, anon_before = rss_mb()
    if mode == "arrow":
        built = load_grpo_rows(params)
    else:  # the old path: every converted row held as Python objects with decoded images
        ds = to_grpo_rows(source_dataset(params))
        built = [ds[i] for i in range(len(ds))]
    after_build, anon_build = rss_mb()
    for i in range(len(built)):  # one pass over the rows, as a training epoch reads them
        row = built[i]
        row["image"].load(), row["full_image"].load()
    after_read, anon_read = rss_mb()
    return {"rows": len(built), "rss_before_mb": before, "rss_built_mb": after_build, "rss_read_mb": after_read,
            "anon_before_mb": anon_before, "anon_built_mb": anon_build, "anon_read_mb": anon_read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--side", type=int, default=448)
    parser.add_argument("--no-list", action="store_true", help="skip the decoded-list comparison")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "ROWS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.child[2])))
        return
    small = max(1, args.rows // 4)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1"}
        path = Path(tmp) / "visionthink.parquet"
        write_parquet(path, args.rows, args.side)
        print(f"{args.rows} rows of {args.side}x{args.side} images: parquet {path.stat().st_size / 2**20:.1f} MiB")
        results: dict[str, dict[int, dict[str, float]]] = {}
        for mode in ("arrow",) if args.no_list else ("arrow", "list"):
            for n in (small, args.rows):
                out = subprocess.run([sys.executable, __file__, "--child", str(path), str(n), mode], env=env,
                                     capture_output=True, text=True, check=True, cwd=ROOT)
                results.setdefault(mode, {})[n] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{'path':<26} {'rows':>6} {'RSS built':>10} {'anon built':>11} {'RSS read':>10} {'anon read':>10}"
              "   (MiB; fresh process each; anon = RSS without file-backed pages)")
        for mode, by_n in results.items():
            name = "GRPO rows (Dataset.map)" if mode == "arrow" else "decoded list (old peak)"
            for n, r in by_n.items():
                print(f"{name:<26} {n:>6} {r['rss_built_mb']:>10.1f} {r['anon_built_mb']:>11.1f} "
                      f"{r['rss_read_mb']:>10.1f} {r['anon_read_mb']:>10.1f}")
            grow = {f"{kind} {stage}": (by_n[args.rows][f"{kind}_{stage}_mb"] - by_n[small][f"{kind}_{stage}_mb"])
                    / ((args.rows - small) / 1000) for stage in ("built", "read") for kind in ("rss", "anon")}
            print(f"{name:<26} per 1,000 rows ({small} -> {args.rows}): "
                  + ", ".join(f"{k} {v:+.1f} MiB" for k, v in grow.items()))


if __name__ == "__main__":
    main()
