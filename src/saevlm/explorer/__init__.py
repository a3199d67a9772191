"""The latent explorer behind ``saevlm explore``: :mod:`~saevlm.explorer.catalog` (the run's
stores), :mod:`~saevlm.explorer.index` (one SAE's view), :mod:`~saevlm.explorer.freshness` (which
files are shown), :mod:`~saevlm.explorer.stats` and :mod:`~saevlm.metrics.coactivation` (statistics
computed once and cached), :mod:`~saevlm.explorer.live` (model inference),
:mod:`~saevlm.explorer.app` (the pages), :mod:`~saevlm.explorer.server` (serving them) and
:mod:`~saevlm.explorer.templates` (HTML, script, style)."""
