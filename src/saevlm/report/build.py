"""``saevlm report``: a run directory -> report.md and report.html (figures inline); see
:mod:`saevlm.report.render` (rendering) and :mod:`saevlm.report.collect` (finding the results)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from saevlm.commandline import CommandConfig, OutputOption, opt
from saevlm.report.render import build_report  # noqa: F401 (the library function, importable from here)


@dataclass(frozen=True, kw_only=True)
class ReportConfig(CommandConfig, OutputOption):
    """`saevlm report`: gather a run directory into report.md / report.html."""

    COMMAND: ClassVar[str] = "report"
    OUTPUT_DEFAULT: ClassVar[str] = '--run_dir, for report.md and report.html'

    run_dir: str = opt()
    """the experiment's output directory (OUT_DIR of the scripts)"""
    no_grids: bool = opt(False)
    """skip top-image grids (faster)"""
    title: str = opt('saevlm report')
    """(default: %(default)s)"""


CONFIG = ReportConfig


def run(args: ReportConfig) -> int:
    md, page, damaged = build_report(args.run_dir, args.output_dir, not args.no_grids, args.title)
    print(f"wrote {md} and {page}")
    if damaged:
        print(f"saevlm report: error: {len(damaged)} result file(s) missing or damaged, left out of the "
              f"report: {damaged[0]}", file=sys.stderr)
        return 1
    return 0
