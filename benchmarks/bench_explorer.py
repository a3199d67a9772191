"""How fast ``saevlm explore`` opens a run with 65,536 latents (the paper's x64 SAE width of a
1024-d model), served locally: the time to the first byte-complete response of each page kind,
first request (nothing cached) and second (cached statistics), measured from a client.

The run is generated: a code store of ``--rows`` images x 65,536 latents with ``--k`` non-zero
codes per row (as BatchTopK writes), MS scores and top-16 images beside it, provenance naming a
synthetic dataset (no thumbnails). ``python benchmarks/bench_explorer.py [--write-readme]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench_extract_multipoint import _write_section  # noqa: E402


def make_run(run: Path, rows: int, latents: int, k: int, seed: int = 0) -> None:
    from saevlm.data.atomic import atomic_save_npy
    from saevlm.data.codes import CodeStoreWriter

    rng = np.random.default_rng(seed)
    prov = {"model": {"name": "bench", "source": "bench"}, "hook": {"attachment_point": "post_mlp_residual", "layer": 22},
            "tokens": {"selection": "cls"},
            "dataset": {"name": "synthetic", "split": "val", "paths_sha256": "bench", "num_selected": rows},
            "sae": {"arch": "matryoshka_batch_top_k", "dict_size": latents, "activation_dim": 1024,
                    "group_sizes": [latents // 8, latents // 8, latents // 4, latents // 2]}}
    store = run / "codes"
    w = CodeStoreWriter(store, encode=None, input_dim=1024, kind="codes", dim=latents, dtype="fp32",
                        images_per_shard=rows, num_images=rows, provenance=prov, software={})
    cols = np.sort(np.stack([rng.choice(latents, k, replace=False) for _ in range(rows)]), axis=1)
    indptr = np.arange(0, rows * k + 1, k, dtype=np.int64)
    vals = rng.exponential(1.0, size=rows * k).astype(np.float32)
    w.write_shard_codes(0, [(indptr, cols.reshape(-1).astype(np.int32), vals)],
                        np.stack([np.arange(rows), -np.ones(rows, dtype=np.int64)], 1), 0, rows,
                        images_n2=np.stack([np.arange(rows), np.arange(rows) + 1], 1))
    w.finalize()
    (store / "ms_bench").mkdir()
    atomic_save_npy(store / "ms_bench" / "scores.npy", rng.uniform(-0.2, 1, latents))
    top = rng.integers(0, rows, size=(latents, 16))
    atomic_save_npy(store / "top_images_16.npy", top)
    atomic_save_npy(store / "top_images_16_values.npy", -np.sort(-rng.exponential(1, (latents, 16)), axis=1))


def timed_get(url: str) -> tuple[float, int]:
    t = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        n = len(r.read())
    return time.perf_counter() - t, n


def browser_times(base: str) -> list[tuple[str, float]]:
    """Wall time of headless Chromium rendering a page (scripts run, DOM dumped), browser start
    included, when Chromium is installed; the blank page is the browser's own start-up cost."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("google-chrome")
    if not exe:
        return []
    out = []
    for label, url in (("blank page (browser start-up)", "about:blank"),
                       ("latent table, 65,536 rows sorted by MS", base + "/sae/codes/index.html#sort=ms&desc=1")):
        t = time.perf_counter()
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                       capture_output=True, timeout=120, check=True)
        out.append((label, time.perf_counter() - t))
        print(f"chromium {label}: {out[-1][1]:.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="images (default: ImageNet val's 50,000)")
    ap.add_argument("--latents", type=int, default=65_536)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        make_run(run, args.rows, args.latents, args.k)
        t0 = time.perf_counter()
        srv = make_server(Explorer(run), "127.0.0.1", 0)
        t_start = time.perf_counter() - t0
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        pages = [("run page", "/index.html"), ("latent table page", "/sae/codes/index.html"),
                 ("latent table data (latents.js)", "/sae/codes/latents.js"),
                 ("latent page", "/sae/codes/latent/12345.html")]
        rows = []
        for label, path in pages:
            first, size = timed_get(base + path)
            second, _ = timed_get(base + path)
            rows.append((label, first, second, size))
            print(f"{label}: first {first:.3f} s, again {second:.3f} s, {size / 1e3:.0f} kB")
        browser = browser_times(base)
        srv.shutdown()
    first_view = rows[1][1] + rows[2][1]
    body = "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU. A code store of {args.rows:,} images x "
        f"{args.latents:,} latents ({args.k} non-zero per row, {args.rows * args.k / 1e6:.1f} M codes), MS scores, "
        f"top-16 images, Matryoshka groups; the explorer server on 127.0.0.1, timed from a client "
        f"(server start {t_start:.3f} s).",
        "",
        "| page | first request (s) | again (s) | size |",
        "|---|---|---|---|",
        *[f"| {label} | {a:.3f} | {b:.3f} | {n / 1e3:,.0f} kB |" for label, a, b, n in rows],
        "",
        f"The latent table's first view (page + data, statistics computed from the codes and cached): "
        f"{first_view:.2f} s; the browser then sorts and filters the {args.latents:,} rows itself. "
        f"A latent page scans the codes for its column (histogram, quantile images).",
        *([""] + [f"Headless Chromium, whole run: {label}: {t:.2f} s." for label, t in browser] +
          [f"Rendering the sorted 65,536-row table in the browser adds {browser[1][1] - browser[0][1]:.2f} s to "
           f"the browser's start-up."] if len(browser) == 2 else []),
    ])
    print(body)
    if args.write_readme:
        _write_section(ROOT / "benchmarks" / "README.md", "explorer", body)


if __name__ == "__main__":
    main()
