"""``saevlm explore``: browse, search and name every SAE latent of a run in a web page.

    saevlm explore --run_dir runs/ms                  # http://127.0.0.1:8000
    saevlm explore --run_dir runs/ms --static site --latents top:500

Serves a local web app over what the run directory already holds: every code store (and
top-images store) becomes a latent table (name, MS, FMS, activation frequency and maximum,
Matryoshka group, hierarchy depth; sortable, filterable, searchable, paginated), every latent a
page (top-16 images, histogram of its non-zero activations, images where it fades, nearest
latents by decoder cosine, steering answers), and the run a page with the report's tables.
Pages are made on request and thumbnails cached, so a run with 65,536 latents opens at once.
``--static DIR`` writes the same pages for a chosen subset of latents as a folder that opens
without a server. Names come from ``saevlm name``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

from saevlm.commandline import CommandConfig, ProgressOption, opt


@dataclass(frozen=True, kw_only=True)
class ExploreConfig(CommandConfig, ProgressOption):
    """`saevlm explore`: browse, search and name every latent of a run in a web page."""

    COMMAND: ClassVar[str] = "explore"

    run_dir: str = opt()
    """the experiment's output directory (OUT_DIR of the scripts)"""
    host: str = opt('127.0.0.1')
    """address to serve on (default: %(default)s, this machine only)"""
    port: int = opt(8000)
    """(default: %(default)s; 0 picks a free port)"""
    cache_dir: str | None = opt(None)
    """thumbnails and statistics (default: <run_dir>/.explorer_cache)"""
    static: str | None = opt(None, metavar='DIR')
    """write the pages into DIR (no server) instead of serving them"""
    latents: str = opt('top:500')
    """with --static: which latents get pages: top:N by MS as the table ranks them, latents active on >= 16 images first (default: %(default)s), all, or ids like 3,17,42"""
    allowed_hosts: list[str] = opt([], nargs='*', metavar='NAME')
    """with --host 0.0.0.0 (or another address): more Host names the server answers, e.g. the name
    other machines reach it by (always answered: the loopback names, this machine's host name, --host)"""
    data_path: str | None = opt(None)
    """the dataset's folder, when it moved since extraction (checked against the stores' file lists and
    image content hashes)"""


CONFIG = ExploreConfig


def run(args: ExploreConfig) -> int:
    from saevlm.errors import UserError
    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import serve

    explorer = Explorer(args.run_dir, args.cache_dir, data_path=args.data_path)
    if args.static:
        out = explorer.export(args.static, args.latents, progress=not args.no_progress)
        print(f"wrote {out.resolve()}/index.html ({len(explorer.index.saes)} SAE(s)); open it in a browser")
        return 0
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port}: expected 0..65535")
    serve(explorer, args.host, args.port, log=lambda m: print(m, file=sys.stderr, flush=True),
          allowed=tuple(args.allowed_hosts))
    return 0
