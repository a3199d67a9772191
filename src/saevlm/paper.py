"""The paper's numbers (arXiv 2504.02821) for the report's "paper" columns, read from
configs/paper.yaml (section ``numbers``), the one place they are written.

Best neuron MS (Table 1a), E = DINOv2, K = 20, CLIP ViT-L/14-336; columns x1 x2 x4 x8 x16 x64
and No SAE = 0.01 for every layer.
"""

from saevlm.config import paper_numbers

_N = paper_numbers()
EXPANSIONS = tuple(_N["expansions"])
MODEL = _N["model"]
BEST_MS = {arch: {(int(k) if str(k).isdigit() else k): tuple(v) for k, v in rows.items()}
           for arch, rows in _N["best_ms"].items()}
NO_SAE_BEST = _N["no_sae_best_ms"]
MEAN_MS_LAST = {arch: tuple(v) for arch, v in _N["mean_ms_last"].items()}
R2_LAST = {arch: tuple(v) for arch, v in _N["r2_last"].items()}
HIERARCHY_INAT = tuple(_N["hierarchy_inat_lca_depth"])
STEERING = {k: str(v) for k, v in _N["steering"].items()}
AGREEMENT_DINO = tuple(_N["agreement_dino"])
AGREEMENT_DINO_MEAN = _N["agreement_dino_mean"]


def paper_value(table: dict, arch: str, layer, expansion: int):
    row = table.get(arch, {}).get(layer)
    if row is None or expansion not in EXPANSIONS:
        return None
    return row[EXPANSIONS.index(expansion)]
