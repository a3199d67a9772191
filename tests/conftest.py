"""Shared fixtures: tiny random models saved to disk and generated image folders.

Everything runs offline: HF_HUB_OFFLINE is set before transformers is imported, and saevlm is
imported first so that its torchvision import fix is in place.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one torch thread each (and in every process they start), so
    # neither oversubscribes the cores when the other starts working (saevlm.threads reads this)
    os.environ.setdefault("SAEVLM_THREADS", "1")

import saevlm  # noqa: E402,F401  (installs the torchvision fix before anything imports torchvision)
import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the worker's torch threads as `saevlm <command>` sets them (cli.main does), also for the tests
    # that run a command through its config (saevlm.api.run). torch first, so that this is
    # torch.set_num_threads and no OMP_NUM_THREADS reaches the processes tests start (they would
    # read it as the user's choice). Only in a worker: in the controller it would be inherited by
    # the workers and override SAEVLM_THREADS there (measured: make test 589 s instead of 364 s).
    import torch  # noqa: E402,F401
    from saevlm.threads import configure_threads  # noqa: E402

    configure_threads()

from helpers import run_cli  # noqa: E402


# Files that take minutes (a real ViT on real images; the experiment scripts, dozens of processes;
# torchrun): collected first, so that with two workers (make test: -n 2 --dist loadfile) they start
# at once, side by side, and the short files fill in around them instead of waiting behind them.
LONG_FIRST = ("real/test_real.py", "cli/test_script_ms.py", "cli/test_script_ms_hub.py",
              "cli/test_script_steering.py", "extraction/test_distributed.py", "cli/test_script_hierarchy.py",
              # then those of 10-30 s, so that the last files to run are short ones and the two
              # workers finish together
              "data/test_hub.py", "sae/test_sae.py", "explorer/test_explorer.py", "device/test_gpu_check.py",
              "extraction/test_extract.py", "metrics/test_hierarchy.py", "explorer/test_explorer_trust.py",
              "explorer/test_explorer_round3.py")


def _long_first(item) -> int:
    path = item.nodeid.split("::")[0].removeprefix("tests/")
    return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(config, items):
    """The long files first (a stable sort: the rest keep their order); tests marked ``cuda`` are
    skipped, with the reason shown, where torch sees no GPU."""
    items.sort(key=_long_first)
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU (torch {torch.__version__} sees none); "
                                   "benchmarks/gpu_check.py runs these on a GPU machine")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from helpers import save_tiny_clip
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    from helpers import save_tiny_siglip
    return save_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


@pytest.fixture(scope="session")
def tiny_dinov2_dir(tmp_path_factory):
    from helpers import save_tiny_dinov2
    return save_tiny_dinov2(tmp_path_factory.mktemp("models") / "tiny-dinov2")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """4 classes x 6 generated PNGs (24 images)."""
    from helpers import make_image_folder
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", num_classes=4, per_class=6)


@pytest.fixture(scope="session")
def big_image_folder(tmp_path_factory):
    """5 classes x 12 generated PNGs (60 images), for resume tests with many shards."""
    from helpers import make_image_folder
    return make_image_folder(tmp_path_factory.mktemp("data") / "images60", num_classes=5,
                             per_class=12, size=36, seed=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The default synthetic world (``saevlm synthetic``), built once per test module
    (test_manifest.py overrides it with a smaller one)."""
    out = tmp_path_factory.mktemp("world")
    assert run_cli("synthetic", "--output_dir", out) == 0
    return out


@pytest.fixture(scope="session")
def explorer_run(tmp_path_factory, tiny_clip_dir):
    """The explorer's run: CLS activations of 32 images of 4 classes (otter, pencil, violin,
    lighthouse), a random 256-latent SAE, codes, MS, top images (tests/test_explorer*.py)."""
    from helpers import make_image_folder, save_random_sae

    root = tmp_path_factory.mktemp("explore")
    images = make_image_folder(root / "images", num_classes=4, per_class=8, size=48,
                               class_names=["otter", "pencil", "violin", "lighthouse"])
    run = root / "run"
    common = ["--dataset_name", "imagefolder", "--data_path", images, "--batch_size", "8", "--num_workers", "0",
              "--device", "cpu", "--no_progress"]
    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "--cls_only",
                   "--output_dir", run / "acts", *common) == 0
    assert run_cli("embed", "--model_name", tiny_clip_dir, "--embeddings_path", run / "emb", *common) == 0
    sae = save_random_sae(root / "sae", dim=64, dict_size=256, k=16)
    assert run_cli("encode", "--sae_path", sae, "--activations_dir", run / "acts" / "post_mlp_residual_1",
                   "--output_dir", run / "codes", "--no_progress") == 0
    assert run_cli("ms", "--activations_dir", run / "codes", "--embeddings_path", run / "emb", "--device", "cpu",
                   "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", run / "codes", "--k", "16", "--no_progress") == 0
    return run
