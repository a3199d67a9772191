"""How fast ``saevlm explore`` serves a run with 65,536 latents (the paper's x64 SAE width of a
1024-d model), against a reference version of saevlm, in one run on one machine.

The run is generated: a code store of ``--rows`` images x 65,536 latents with ``--k`` non-zero
codes per row (as BatchTopK writes), its Matryoshka SAE checkpoint (1024 x 65,536, for the nearest
latents by decoder cosine), MS scores, top-16 images, and a names.json with three names and a label
per latent, as ``saevlm name`` writes them. Each version serves it from a fresh process (so the
first latent page pays for whatever it imports); a client then measures:

- time to interactive: headless Chromium (DevTools protocol, tests/cdp.py) from navigating to the
  latent table until its first rows are on screen, on a cold server (statistics computed from the
  codes) and again;
- the run page and the first latent page, from the client;
- 200 mixed requests from 8 threads (latent pages of 100 latents, the table data, the run page,
  the table page, the style sheet and script), p50 / p95 / wall;
- bytes sent for the table data (the browser asks for gzip).

``python benchmarks/bench_explorer.py [--reference COMMIT] [--write-readme]``; the reference is
checked out with ``git worktree`` into a temporary folder (default: the commit before the explorer
work of issue 22's second round).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from bench_extract_multipoint import _write_section  # noqa: E402

REFERENCE = "bc1e9de"


def make_run(run: Path, rows: int, latents: int, k: int, dim: int = 1024, seed: int = 0) -> None:
    import torch

    from saevlm.data.atomic import atomic_save_npy
    from saevlm.data.codes import CodeStoreWriter, CSRParts

    rng = np.random.default_rng(seed)
    groups = [latents // 8, latents // 8, latents // 4, latents // 2]
    sae_dir = run / "sae" / "trainer_0"
    sae_dir.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(latents, dim, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    torch.save({"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(latents), "W_dec": w_dec, "b_dec": torch.zeros(dim),
                "k": torch.tensor(k), "threshold": torch.tensor(0.5), "group_sizes": torch.tensor(groups)},
               sae_dir / "ae.pt")
    (sae_dir / "config.json").write_text(json.dumps({"trainer": {"dict_class": "MatryoshkaBatchTopKSAE",
                                                                 "activation_dim": dim, "dict_size": latents}}))
    prov = {"model": {"name": "bench", "source": "bench"}, "hook": {"attachment_point": "post_mlp_residual", "layer": 22},
            "tokens": {"selection": "cls"},
            "dataset": {"name": "synthetic", "split": "val", "paths_sha256": "bench", "num_selected": rows},
            "sae": {"path": str(sae_dir), "arch": "matryoshka_batch_top_k", "dict_size": latents, "activation_dim": dim,
                    "group_sizes": groups}}
    store = run / "codes"
    w = CodeStoreWriter(store, encode=None, input_dim=dim, kind="codes", dim=latents, dtype="fp32",
                        images_per_shard=rows, num_images=rows, provenance=prov, software={})
    cols = np.sort(np.stack([rng.choice(latents, k, replace=False) for _ in range(rows)]), axis=1)
    indptr = np.arange(0, rows * k + 1, k, dtype=np.int64)
    vals = rng.exponential(1.0, size=rows * k).astype(np.float32)
    w.write_shard(0, CSRParts([(indptr, cols.reshape(-1).astype(np.int32), vals)]),
                        np.stack([np.arange(rows), -np.ones(rows, dtype=np.int64)], 1), 0, rows,
                        images_n2=np.stack([np.arange(rows), np.arange(rows) + 1], 1))
    w.finalize()
    (store / "ms_bench").mkdir()
    atomic_save_npy(store / "ms_bench" / "scores.npy", rng.uniform(-0.2, 1, latents))
    # top-16 images as top-images writes them: values in descending order, 0 past a latent's activations
    top = rng.integers(0, rows, size=(latents, 16))
    values = -np.sort(-rng.exponential(1, (latents, 16)), axis=1)
    values[np.arange(16)[None, :] >= rng.integers(1, 17, size=(latents, 1))] = 0
    atomic_save_npy(store / "top_images_16.npy", top)
    atomic_save_npy(store / "top_images_16_values.npy", values)
    words = [f"word{i}" for i in range(1000)]
    names = {"format": "saevlm-names", "k": 16, "latents": [
        {"id": j, "n_active": int((values[j] > 0).sum()),
         "names": [[words[int(x)], round(float(rng.uniform(0.2, 0.3)), 5)] for x in rng.integers(0, 1000, 3)],
         "margin": 0.01, "purity": 0.5, "entropy_bits": 1.0, "label": words[j % 1000]} for j in range(latents)]}
    (store / "names.json").write_text(json.dumps(names))


def serve(run: str, cache: str) -> None:
    """Child process: build the explorer, say its port and start-up time, serve until killed."""
    t0 = time.perf_counter()
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    srv = make_server(Explorer(run, cache, log=lambda *a: None), "127.0.0.1", 0)
    print(json.dumps({"port": srv.server_address[1], "start_s": time.perf_counter() - t0}), flush=True)
    srv.serve_forever()


def get(url: str) -> tuple[float, int, int]:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        n = len(r.read())
        status = r.status
    return time.perf_counter() - t, n, status


def measure(label: str, src: Path, run: Path, cache: Path, latents: int, browser_ok: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(run), "--cache", str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        hello = json.loads(proc.stdout.readline())
        base = f"http://127.0.0.1:{hello['port']}"
        out: dict = {"label": label, "start_s": hello["start_s"]}
        if browser_ok:
            from cdp import Browser

            with Browser() as b:
                times = []
                for _ in range(4):  # the first on a cold server; then the median of three
                    b.open("about:blank")
                    t = time.perf_counter()
                    b.call("Page.navigate", session=True, url=base + "/sae/codes/index.html")
                    b.wait("document.querySelectorAll('#latents tbody tr').length > 0", timeout=600)
                    times.append(time.perf_counter() - t)
                out["tti_cold_s"], out["tti_warm_s"] = times[0], float(np.median(times[1:]))
        out["run_page_s"], _, _ = get(base + "/")
        out["run_page_again_s"], _, _ = get(base + "/")
        out["latent_first_s"], _, _ = get(base + f"/sae/codes/latent/{latents // 5 + 3}.html")
        _, out["latents_js_bytes"], _ = get(base + "/sae/codes/latents.js")
        rng = random.Random(0)
        paths = ([f"/sae/codes/latent/{rng.randrange(latents)}.html" for _ in range(100)] +
                 ["/sae/codes/latents.js"] * 30 + ["/"] * 20 + ["/sae/codes/index.html"] * 20 +
                 ["/static/style.css"] * 15 + ["/static/explorer.js"] * 15)
        rng.shuffle(paths)
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda p: get(base + p), paths))
        out["mixed_wall_s"] = time.perf_counter() - t
        lat = np.array([r[0] for r in results])
        out["mixed_p50_s"], out["mixed_p95_s"] = float(np.percentile(lat, 50)), float(np.percentile(lat, 95))
        static = np.array([r[0] for p, r in zip(paths, results) if p.startswith("/static/")])
        out["static_p95_s"] = float(np.percentile(static, 95))
        out["errors"] = sum(r[2] != 200 for r in results)
        print(label, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))
        return out
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="images (default: ImageNet val's 50,000)")
    ap.add_argument("--latents", type=int, default=65_536)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--reference", default=REFERENCE, help="git commit of saevlm to compare with (default: %(default)s)")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.cache)
    import shutil

    browser_ok = bool(shutil.which("chromium") or shutil.which("google-chrome"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ref = tmp / "reference"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref), args.reference],
                       check=True, capture_output=True)
        try:
            run = tmp / "run"
            t = time.perf_counter()
            make_run(run, args.rows, args.latents, args.k)
            print(f"run generated in {time.perf_counter() - t:.1f} s")
            results = [measure(f"reference ({args.reference})", ref / "src", run, tmp / "cache-ref", args.latents,
                               browser_ok),
                       measure("this version", ROOT / "src", run, tmp / "cache-new", args.latents, browser_ok)]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref)], capture_output=True)
    ref_r, new = results
    rows = [("server start (s)", "start_s"), ("time to interactive, latent table, cold server (s)", "tti_cold_s"),
            ("time to interactive, latent table, again (median of 3) (s)", "tti_warm_s"), ("run page (s)", "run_page_s"),
            ("run page again (s)", "run_page_again_s"), ("first latent page (s)", "latent_first_s"),
            ("200 mixed requests, 8 threads: p50 (s)", "mixed_p50_s"), ("... p95 (s)", "mixed_p95_s"),
            ("... style sheet and script, p95 (s)", "static_p95_s"), ("... wall (s)", "mixed_wall_s"),
            ("table data sent (kB)", "latents_js_bytes")]
    lines = []
    for label, key in rows:
        if key not in new:
            continue
        a, b = ref_r[key], new[key]
        scale = 1e-3 if key.endswith("bytes") else 1
        lines.append(f"| {label} | {a * scale:,.3f} | {b * scale:,.3f} | {a / b if b else float('inf'):.1f}x |")
    body = "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU. A code store of {args.rows:,} images x "
        f"{args.latents:,} latents ({args.k} non-zero per row), its Matryoshka checkpoint (1024 x {args.latents:,}), "
        f"MS, top-16 images (a latent active on 1 to 16 of them), names.json with 3 names and a label per latent "
        f"(generated). Each version serves it from a fresh process on "
        f"127.0.0.1; `python benchmarks/bench_explorer.py --write-readme` (reference: saevlm {args.reference}).",
        "",
        f"| measure | reference {args.reference} | this version | reference / this |",
        "|---|---|---|---|",
        *lines,
        "",
        f"Errors in the mixed requests: reference {ref_r['errors']}, this version {new['errors']}.",
    ])
    print(body)
    if args.write_readme:
        _write_section(ROOT / "benchmarks" / "README.md", "explorer", body)


if __name__ == "__main__":
    main()
