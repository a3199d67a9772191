"""The 28 python invocations of the authors' three scripts (ExplainableML/sae-for-vlm @ 69e211d:
scripts/monosemanticity_score.sh, matryoshka_hierarchy.sh, mllm_steering.sh), as data: the
script, the authors' python file, and its flags with the values the scripts pass (loop variables
at one of their values; ``$EMBEDDINGS_PATH``, unset in their script, set to the embeddings the
script writes in step 4). ``SCRIPT_TO_COMMAND`` maps each file to the saevlm command that
replaces it (docs/authors-commands.md).
"""

D = "/data/imagenet"
I = "/data/inat2021"  # noqa: E741
M = "clip-vit-large-patch14-336"
ACT = "./activations_dir"
CK = "./checkpoints_dir"
RAW = f"{ACT}/raw/imagenet_{{split}}_activations_{M}_{{layer}}_{{point}}"
STEER_SAE = (f"{CK}/matroyshka_batch_top_k_20_x64/random_k_2/imagenet_train_activations_{M}_22_post_mlp_residual_"
             f"matroyshka_batch_top_k_20_x64/trainer_0/checkpoints/ae_100000.pt")
STEER_TOP = f"{ACT}/matroyshka_batch_top_k_20_x64/mean_pool/imagenet_train_activations_{M}_22_post_mlp_residual"

SCRIPT_TO_COMMAND = {
    "save_activations.py": "extract", "sae_train.py": "train", "encode_images.py": "embed",
    "metric.py": "ms", "find_hai_indices.py": "top-images", "visualize_neurons.py": "visualize",
    "inat_depth.py": "hierarchy", "steering_score.py": "steering-score",
    "similarity_baseline.py": "similarity-baseline", "imagenet_subset.py": "make-eval-folder",
    "steering_qualitative.py": "steer", "uniqueness.py": "uniqueness",
}


def _train(sae_model: str, act: str, val: str, ck: str, expansion: str, fractions: list[str] | None):
    args = ["--sae_model", sae_model, "--activations_dir", act, "--val_activations_dir", val,
            "--checkpoints_dir", ck, "--expansion_factor", expansion, "--steps", "110000", "--save_steps", "20000",
            "--log_steps", "10000", "--batch_size", "4096", "--k", "20", "--auxk_alpha", "0.03",
            "--decay_start", "109999"]
    return args + (["--group_fractions", *fractions] if fractions else [])


def _steering_score(images: str, prefix: str, steer: str, out: str):
    return ["--hai_indices_path", f"{STEER_TOP}/hai_indices_16.npy",
            "--embeddings_path", "./embeddings_dir/imagenet_train_embeddings_clip-vit-base-patch32.pt",
            "--sae_path", STEER_SAE, "--images_path", images, "--no-pre_zero", "--model_name", "clip-vit-base-patch32",
            "--neuron_prefix", prefix, steer, "--output_path", out]


_MS_FRACTIONS = ["0.0625", "0.125", "0.25", "0.5625"]
_MS_SAE = (f"{CK}/matroyshka_batch_top_k_20_x4/imagenet_train_activations_{M}_-1_post_projection_"
           f"matroyshka_batch_top_k_20_x4/trainer_0/checkpoints/ae_100000.pt")
_MS_TRAIN_CODES = f"{ACT}/matroyshka_batch_top_k_20_x4/imagenet_train_activations_{M}_-1_post_projection"
_EMB = "embeddings_dir/imagenet_val_embeddings_clip-vit-base-patch32.pt"
_INAT_RAW = f"{ACT}/raw/inat_{{split}}_activations_{M}_-1_post_projection"
_INAT_SAE = (f"{CK}/matroyshka_batch_top_k_20_x2/inat_train_activations_{M}_-1_post_projection_"
             f"matroyshka_batch_top_k_20_x2/trainer_0/checkpoints/ae_100000.pt")
_INAT_CODES = f"{ACT}/matroyshka_batch_top_k_20_x2/inat_train_activations_{M}_-1_post_projection"

INVOCATIONS: list[tuple[str, str, list[str]]] = [
    # --- monosemanticity_score.sh (10)
    ("monosemanticity_score.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_mlp_residual", "--layer", "11",
      "--dataset_name", "imagenet", "--split", "train", "--data_path", D, "--num_workers", "8",
      "--output_dir", RAW.format(split="train", layer=11, point="post_mlp_residual"), "--cls_only",
      "--save_every", "100"]),
    ("monosemanticity_score.sh", "sae_train.py",
     _train("matroyshka_batch_top_k", RAW.format(split="train", layer=-1, point="post_projection"),
            RAW.format(split="val", layer=-1, point="post_projection"),
            f"{CK}/matroyshka_batch_top_k_20_x4", "4", _MS_FRACTIONS)),
    ("monosemanticity_score.sh", "sae_train.py",
     _train("batch_top_k", RAW.format(split="train", layer=-1, point="post_projection"),
            RAW.format(split="val", layer=-1, point="post_projection"), f"{CK}/batch_top_k_20_x4", "4", None)),
    ("monosemanticity_score.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_projection", "--layer", "-1",
      "--dataset_name", "imagenet", "--split", "val", "--data_path", D, "--num_workers", "8",
      "--output_dir", f"{ACT}/matroyshka_batch_top_k_20_x4/imagenet_val_activations_{M}_-1_post_projection",
      "--cls_only", "--save_every", "100", "--sae_model", "matroyshka_batch_top_k", "--sae_path", _MS_SAE]),
    ("monosemanticity_score.sh", "encode_images.py",
     ["--embeddings_path", _EMB, "--model_name", "clip-vit-base-patch32", "--dataset_name", "imagenet",
      "--split", "val", "--data_path", D, "--batch_size", "128"]),
    ("monosemanticity_score.sh", "metric.py",
     ["--activations_dir", f"{ACT}/matroyshka_batch_top_k_20_x4/imagenet_val_activations_{M}_-1_post_projection",
      "--embeddings_path", _EMB, "--output_subdir", "ms_clip-vit-base-patch32"]),
    ("monosemanticity_score.sh", "metric.py",
     ["--activations_dir", RAW.format(split="val", layer=-1, point="post_projection"),
      "--embeddings_path", _EMB, "--output_subdir", "ms_clip-vit-base-patch32"]),
    ("monosemanticity_score.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_projection", "--layer", "-1",
      "--dataset_name", "imagenet", "--split", "train", "--data_path", D, "--num_workers", "8",
      "--output_dir", _MS_TRAIN_CODES, "--cls_only", "--save_every", "100",
      "--sae_model", "matroyshka_batch_top_k", "--sae_path", _MS_SAE]),
    ("monosemanticity_score.sh", "find_hai_indices.py",
     ["--activations_dir", _MS_TRAIN_CODES, "--dataset_name", "imagenet", "--data_path", D, "--split", "train",
      "--k", "16", "--chunk_size", "1000"]),
    ("monosemanticity_score.sh", "visualize_neurons.py",
     ["--output_dir", _MS_TRAIN_CODES, "--top_k", "16", "--dataset_name", "imagenet", "--data_path", D,
      "--split", "train", "--group_fractions", *_MS_FRACTIONS,
      "--hai_indices_path", f"{_MS_TRAIN_CODES}/hai_indices_16.npy"]),
    # --- matryoshka_hierarchy.sh (5)
    ("matryoshka_hierarchy.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_projection", "--layer", "-1",
      "--dataset_name", "inat", "--split", "train", "--data_path", I, "--num_workers", "8",
      "--output_dir", _INAT_RAW.format(split="train"), "--cls_only", "--save_every", "100"]),
    ("matryoshka_hierarchy.sh", "sae_train.py",
     _train("matroyshka_batch_top_k", _INAT_RAW.format(split="train").lstrip("./"),
            _INAT_RAW.format(split="val").lstrip("./"), f"{CK.lstrip('./')}/matroyshka_batch_top_k_20_x2", "2",
            ["0.002", "0.009", "0.035", "0.189", "0.765"])),
    ("matryoshka_hierarchy.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_projection", "--layer", "-1",
      "--dataset_name", "inat", "--split", "train", "--data_path", I, "--num_workers", "8",
      "--output_dir", _INAT_CODES, "--cls_only", "--save_every", "100",
      "--sae_model", "matroyshka_batch_top_k", "--sae_path", _INAT_SAE]),
    ("matryoshka_hierarchy.sh", "find_hai_indices.py",
     ["--activations_dir", _INAT_CODES, "--dataset_name", "inat", "--data_path", I, "--split", "train",
      "--k", "16", "--chunk_size", "1000"]),
    ("matryoshka_hierarchy.sh", "inat_depth.py",
     ["--activations_dir", _INAT_CODES, "--hai_indices_path", f"{_INAT_CODES}/hai_indices_16.npy",
      "--data_path", I, "--split", "train", "--k", "16",
      "--group_fractions", "0.002", "0.009", "0.035", "0.189", "0.765"]),
    # --- mllm_steering.sh (13)
    ("mllm_steering.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_mlp_residual", "--layer", "22",
      "--dataset_name", "imagenet", "--split", "train", "--data_path", D, "--num_workers", "8",
      "--output_dir", f"{ACT}/raw/random_k_2/imagenet_train_activations_{M}_22_post_mlp_residual",
      "--random_k", "2", "--save_every", "100"]),
    ("mllm_steering.sh", "sae_train.py",
     _train("matroyshka_batch_top_k", f"activations_dir/raw/random_k_2/imagenet_train_activations_{M}_22_post_mlp_residual",
            f"activations_dir/raw/random_k_2/imagenet_val_activations_{M}_22_post_mlp_residual",
            "checkpoints_dir/matroyshka_batch_top_k_20_x64/random_k_2/", "64", _MS_FRACTIONS)),
    ("mllm_steering.sh", "save_activations.py",
     ["--batch_size", "32", "--model_name", M, "--attachment_point", "post_mlp_residual", "--layer", "22",
      "--dataset_name", "imagenet", "--split", "train", "--data_path", D, "--num_workers", "8",
      "--output_dir", STEER_TOP, "--mean_pool", "--save_every", "100",
      "--sae_model", "matroyshka_batch_top_k", "--sae_path", STEER_SAE]),
    ("mllm_steering.sh", "find_hai_indices.py",
     ["--activations_dir", STEER_TOP, "--dataset_name", "imagenet", "--data_path", D, "--split", "train",
      "--k", "16", "--chunk_size", "1000"]),
    ("mllm_steering.sh", "visualize_neurons.py",
     ["--output_dir", STEER_TOP, "--top_k", "16", "--dataset_name", "imagenet", "--data_path", D,
      "--split", "train", "--group_fractions", *_MS_FRACTIONS, "--hai_indices_path", f"{STEER_TOP}/hai_indices_16.npy"]),
    ("mllm_steering.sh", "encode_images.py",
     ["--embeddings_path", "embeddings_dir/imagenet_train_embeddings_clip-vit-base-patch32.pt",
      "--model_name", "clip-vit-base-patch32", "--dataset_name", "imagenet", "--split", "train",
      "--data_path", D, "--batch_size", "128"]),
    ("mllm_steering.sh", "imagenet_subset.py", ["--imagenet_root", D, "--output_dir", "./images_imagenet"]),
    ("mllm_steering.sh", "steering_score.py",
     _steering_score("./images_imagenet/", "10", "--no-steer", "./llava_results_dir/1000/no_steering/")),
    ("mllm_steering.sh", "steering_score.py",
     _steering_score("./images_imagenet/", "10", "--steer", "./llava_results_dir/1000/steering/")),
    ("mllm_steering.sh", "steering_score.py",
     _steering_score("./images/", "1000", "--no-steer", "./llava_results_dir/1/no_steering/")),
    ("mllm_steering.sh", "steering_score.py",
     _steering_score("./images/", "1000", "--steer", "./llava_results_dir/1/steering/")),
    ("mllm_steering.sh", "similarity_baseline.py", []),
    ("mllm_steering.sh", "steering_qualitative.py", []),
]
