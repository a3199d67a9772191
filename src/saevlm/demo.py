"""``saevlm demo`` (``make demo``): the paper's MS experiment end to end on the synthetic world.

Through the same commands a researcher runs on ImageNet: a synthetic ground-truth world
(activations + an independent embedding store) -> BatchTopK and Matryoshka SAEs at three
expansion factors trained in ONE shared run -> codes -> MS of raw neurons and SAE latents ->
top images -> Matryoshka hierarchy -> report. A few minutes on a 2-core CPU.

The world uses uniform leaf usage and ancestors nearly as strong as leaves (``--zipf 0
--ancestor_scale 0.9``), so coarse concepts carry most of the variance, as general visual
concepts do in real images; the Matryoshka groups are sized like the concept tree's levels.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from saevlm.commandline import CommandConfig, opt
from saevlm.data import artifacts as A
from saevlm.errors import UserError

FRACTIONS = ["0.05", "0.2", "0.75"]


@dataclass(frozen=True, kw_only=True)
class DemoConfig(CommandConfig):
    """`saevlm demo`: the built-in default job: the MS experiment on the synthetic world."""

    COMMAND: ClassVar[str] = "demo"

    output_dir: str = opt('runs/demo')
    """where to write (default: %(default)s)"""
    steps: int = opt(2000)
    """SAE training steps (default: %(default)s)"""
    expansion_factor: list[str] = opt(['1', '2', '4'])
    """(default: 1 2 4)"""
    device: str = opt('cpu')
    """(default: %(default)s)"""

    def validate(self) -> None:
        """Before anything is written: the demo trains with 100 warm-up steps and the threshold from
        step 200, so it needs more steps than that, and expansion factors are positive numbers."""
        if self.steps <= 200:
            raise UserError(f"steps {self.steps}: the demo needs more than 200 steps (it warms up for 100 and "
                            f"starts the threshold at step 200)", field="steps")
        for e in self.expansion_factor:
            try:
                ok = float(e) > 0
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"expansion_factor {e!r}: expected a positive number", field="expansion_factor")


CONFIG = DemoConfig


def _step(title: str, argv: list) -> None:
    from saevlm.cli import main

    print(f"\n== {title}: saevlm {' '.join(map(str, argv))}", file=sys.stderr, flush=True)
    rc = main([str(a) for a in argv])
    if rc:
        raise SystemExit(rc)


def run(args: DemoConfig) -> int:
    import json

    from saevlm.sae.archs import spec

    t0 = time.time()
    out = Path(args.output_dir)
    world, sae_dir = out / "world", out / "sae"
    dev = ["--device", args.device]
    _step("1/6 synthetic world", ["synthetic", "--output_dir", world, "--zipf", "0", "--ancestor_scale", "0.9"])
    _step("2/6 train 2 architectures x 3 expansion factors on shared batches",
          ["train", "--activations_dir", world / "train", "--val_activations_dir", world / "val",
           "--checkpoints_dir", sae_dir, "--sae_model", "batch_top_k", "matryoshka_batch_top_k",
           "--expansion_factor", *args.expansion_factor, "--k", "4", "--steps", args.steps,
           "--batch_size", "1024", "--warmup_steps", "100", "--threshold_start_step", "200",
           "--log_steps", max(args.steps // 2, 1), "--group_fractions", *FRACTIONS, *dev])
    _step("3/6 MS of the raw neurons", ["ms", "--activations_dir", world / "val", "--embeddings_path",
                                        world / "embeddings_val", "--no_progress", *dev])
    trainers = json.loads((sae_dir / A.RUN_JSON).read_text())["identity"]["trainers"]
    for t in trainers:
        codes = out / "codes" / t["dir"]
        _step(f"4/6 encode + MS + top images, {t['arch']} x{t['expansion_factor']}",
              ["encode", "--sae_path", sae_dir / t["dir"], "--activations_dir", world / "val",
               "--output_dir", codes, "--no_progress", *dev])
        _step("    MS", ["ms", "--activations_dir", codes, "--embeddings_path", world / "embeddings_val",
                         "--no_progress", *dev])
        _step("    top images", ["top-images", "--activations_dir", codes, "--no_progress", *dev])
        if spec(t["arch"]).grouped:
            _step("5/6 hierarchy", ["hierarchy", "--activations_dir", codes])
    _step("6/6 report", ["report", "--run_dir", out, "--title", "saevlm demo: synthetic world"])
    raw = json.loads((world / "val" / "ms_synthetic" / A.MS_JSON).read_text())
    print(f"\nMS mean: raw neurons {raw['mean']:.3f}", file=sys.stderr)
    for t in trainers:
        m = json.loads((out / "codes" / t["dir"] / "ms_synthetic" / A.MS_JSON).read_text())
        print(f"MS mean: {t['arch']} x{t['expansion_factor']}: {m['mean']:.3f} "
              f"(best {m['top10'][0][1]:.3f})", file=sys.stderr)
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"report: {(out / 'report.html').resolve()}  (and report.md)")
    print(f"browse every latent: saevlm explore --run_dir {out}   (then open http://127.0.0.1:8000)")
    return 0
