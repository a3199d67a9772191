"""The latent explorer behind ``saevlm explore``: :mod:`~saevlm.explorer.index` (what a run
holds, read lazily), :mod:`~saevlm.explorer.app` (the pages), :mod:`~saevlm.explorer.server`
(serving them) and :mod:`~saevlm.explorer.templates` (HTML, script, style)."""
