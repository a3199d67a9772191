"""``saevlm report``: a run directory -> report.md and report.html (figures inline); see
:mod:`saevlm.report.render` (rendering) and :mod:`saevlm.report.collect` (finding the results)."""

from __future__ import annotations

import sys

from saevlm.report.render import build_report  # noqa: F401 (the library function, importable from here)


def add_arguments(p) -> None:
    p.add_argument("--run_dir", required=True, help="the experiment's output directory (OUT_DIR of the scripts)")
    p.add_argument("--output_dir", default=None, help="where report.md / report.html go (default: --run_dir)")
    p.add_argument("--no_grids", action="store_true", help="skip top-image grids (faster)")
    p.add_argument("--title", default="saevlm report", help="(default: %(default)s)")


def run(args) -> int:
    md, page, damaged = build_report(args.run_dir, args.output_dir, not args.no_grids, args.title)
    print(f"wrote {md} and {page}")
    if damaged:
        print(f"saevlm report: error: {len(damaged)} result file(s) missing or damaged, left out of the "
              f"report: {damaged[0]}", file=sys.stderr)
        return 1
    return 0
