"""The paper's numbers (arXiv 2504.02821), for the report's "paper" columns.

Best neuron MS (Table 1a), E = DINOv2, K = 20, CLIP ViT-L/14-336; columns x1 x2 x4 x8 x16 x64
and No SAE = 0.01 for every layer.
"""

EXPANSIONS = (1, 2, 4, 8, 16, 64)
MODEL = "clip-vit-large-patch14-336"
BEST_MS = {
    "batch_top_k": {11: (.61, .73, .71, .87, .90, 1.00), 17: (.65, .79, .86, .86, .93, 1.00),
                    22: (.66, .79, .80, .88, .92, 1.00), 23: (.73, .72, .83, .89, .93, 1.00),
                    "last": (.57, .78, .78, .81, .85, 1.00)},
    "matryoshka_batch_top_k": {11: (.84, .90, .95, 1.00, .89, 1.00), 17: (.86, .84, .93, .94, .96, 1.00),
                               22: (.83, .83, .87, .94, 1.00, 1.00), 23: (.82, .84, .89, .93, .96, 1.00),
                               "last": (.82, .91, .89, .93, .91, 1.00)},
}
NO_SAE_BEST = 0.01
MEAN_MS_LAST = {"batch_top_k": (.12, .17, .19, .19, .16, .13),
                "matryoshka_batch_top_k": (.16, .20, .23, .22, .19, .13)}
R2_LAST = {"batch_top_k": (70.1, 74.6, 77.1, 78.2, 78.6, 79.1),
           "matryoshka_batch_top_k": (66.8, 71.6, 74.1, 76.0, 77.6, 78.2)}
HIERARCHY_INAT = (3.33, 2.92, 3.85, 3.86, 4.06)
STEERING = {"steered_white": "0.259 ± 0.036", "steered_imagenet": "0.263", "unsteered_white": "0.212",
            "unsteered_imagenet": "0.211", "bound_true_names": "0.283", "bound_random_pairs": "0.185"}
AGREEMENT_DINO = (.56, .66, .71, .81, .85, .93, .94, .96, 1.00)


def paper_value(table: dict, arch: str, layer, expansion: int):
    row = table.get(arch, {}).get(layer)
    if row is None or expansion not in EXPANSIONS:
        return None
    return row[EXPANSIONS.index(expansion)]
