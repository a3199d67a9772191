"""The typed manifest, provenance and result records (saevlm.data.manifest, saevlm.data.artifacts):
exact round trips of what the writers produce, old stores still read, one compatibility check,
damaged keys named."""

import json
from pathlib import Path

import pytest

from helpers import FIXTURES as FIXTURE_ROOT
from saevlm.data.manifest import Manifest, Provenance
from saevlm.data.store import STORAGE_DTYPE_NAMES, ActivationStore
from saevlm.errors import UserError


FIXTURES = FIXTURE_ROOT / "stores_v1"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from saevlm.synthetic import WorldParams, write_world

    out = tmp_path_factory.mktemp("world")
    write_world(WorldParams(num_train=64, num_val=32), out, log=lambda m: None)
    return out


def _parse(raw: dict, path: Path, fmt: str = "saevlm-activations", payload=("file",)) -> Manifest:
    return Manifest.from_json(raw, path, "store", fmt, payload, STORAGE_DTYPE_NAMES)


def test_manifest_written_today_round_trips_exactly(world):
    for name in ("train", "val", "embeddings_val"):
        path = world / name / "manifest.json"
        raw = json.loads(path.read_text())
        m = _parse(raw, path)
        assert m.to_json() == raw                      # nothing lost, nothing added
        assert Provenance.from_json(raw["provenance"]).to_json() == raw["provenance"]
        assert m.provenance.dataset.split == raw["provenance"]["dataset"]["split"]
        assert m.shards[0].checksums == raw["shards"][0]["checksums"]


def test_fixture_stores_of_the_first_schema_still_parse_and_keep_their_keys():
    for name, fmt, payload in (("acts_fp32", "saevlm-activations", ("file",)),
                               ("acts_bf16", "saevlm-activations", ("file",)),
                               ("codes", "saevlm-codes", ("indptr", "indices", "values", "nnz"))):
        path = FIXTURES / name / "manifest.json"
        raw = json.loads(path.read_text())
        m = _parse(raw, path, fmt, payload)
        again = m.to_json()
        for key, value in raw.items():               # every recorded key survives with its value
            if key != "provenance":
                assert again[key] == value, key
        for section, fields in raw["provenance"].items():
            for key, value in fields.items():
                assert again["provenance"][section][key] == value
        assert _parse(again, path, fmt, payload) == m  # idempotent
    codes = _parse(json.loads((FIXTURES / "codes" / "manifest.json").read_text()),
                   FIXTURES / "codes", "saevlm-codes", ("indptr", "indices", "values", "nnz"))
    assert codes.dict_size == 8 and codes.provenance.sae.dict_size == 8


def test_unknown_keys_are_kept():
    prov = Provenance.from_json({"model": {"name": "m", "source": "s", "future_key": [1, 2]},
                                 "hook": {"attachment_point": "post_mlp_residual", "layer": 3},
                                 "tokens": {"selection": "cls"}, "dataset": {"split": "val"},
                                 "later_section": {"x": 1}})
    assert prov.model.extra == {"future_key": [1, 2]}
    assert prov.to_json()["model"]["future_key"] == [1, 2]
    assert prov.to_json()["later_section"] == {"x": 1}


def test_compatible_with_names_the_first_difference():
    base = {"model": {"name": "a", "source": "hub/a"}, "hook": {"attachment_point": "post_mlp_residual", "layer": 3},
            "tokens": {"selection": "cls"}, "dataset": {"split": "val", "paths_sha256": "p"},
            "run": {"batch_size": 8, "autocast": "none"}}
    a = Provenance.from_json(base)
    assert a.compatible_with(Provenance.from_json(base)) is None
    # the batch size is not part of compatibility; the display name is not either
    other_run = json.loads(json.dumps(base))
    other_run["run"]["batch_size"] = 64
    other_run["model"]["name"] = "renamed"
    assert a.compatible_with(Provenance.from_json(other_run)) is None
    for section, key, value in (("model", "source", "hub/b"), ("hook", "layer", 4),
                                ("tokens", "selection", "all"), ("dataset", "paths_sha256", "q"),
                                ("dataset", "split", "train")):
        changed = json.loads(json.dumps(base))
        changed[section][key] = value
        diff = a.compatible_with(Provenance.from_json(changed))
        assert diff is not None and (diff.aspect, diff.key, diff.theirs) == (section, key, value)
        assert a.compatible_with(Provenance.from_json(changed),
                                 aspects=[x for x in ("model", "hook", "tokens", "dataset") if x != section]) is None


def test_a_wrongly_typed_provenance_key_is_named(tmp_path, world):
    import shutil

    store = tmp_path / "s"
    shutil.copytree(world / "val", store)
    raw = json.loads((store / "manifest.json").read_text())
    raw["provenance"]["hook"]["layer"] = "three"
    (store / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"provenance\.hook\.layer is 'three', expected int"):
        ActivationStore(store)


def test_model_labels_hide_machine_paths():
    from saevlm.data.manifest import ModelInfo, display_name

    assert ModelInfo(name="/root/.cache/saevlm-tests/dinov2-s14-focus-v1").label == "dinov2-s14-focus-v1"
    assert ModelInfo(name="openai/clip-vit-large-patch14-336").label == "openai/clip-vit-large-patch14-336"
    assert ModelInfo(name="clip-vit-base-patch32").label == "clip-vit-base-patch32"
    assert ModelInfo(name=None, source="./models/tiny/").label == "tiny"
    assert display_name("local-dir:/x/y/open-clip-b32") == "open-clip-b32"


def test_result_records_round_trip_and_name_damage(tmp_path):
    from saevlm.data import artifacts as A

    names = {"format": "saevlm-names", "k": 16, "latents": [
        {"id": 0, "names": [["otter", 0.3], ["violin", 0.2]], "margin": 0.1, "n_active": 5, "purity": 0.8,
         "entropy_bits": 0.7, "label": "otter", "future_key": 1}], "new_top_level": {"x": 1}}
    rec = A.NamesResult.from_json(names, "names.json")
    assert rec.latents[0].names[1] == ("violin", 0.2) and rec.latents[0].purity == 0.8 and rec.named_where_active
    assert rec.to_json() == names  # unknown keys kept, nothing invented
    (tmp_path / "names.json").write_text("{ damaged")
    with pytest.raises(A.ResultError, match=r"names.json: not valid JSON \(line 1\)"):
        A.NamesResult.from_file(tmp_path / "names.json")
    with pytest.raises(A.ResultError, match="not a names result"):
        A.NamesResult.from_json({"format": "saevlm-names"}, "names.json")
    with pytest.raises(A.ResultError, match="damaged hierarchy group"):
        A.HierarchyResult.from_json({"groups": [{"group": 0, "nope": 1, "size": "x", "left_out_near_dead": []}],
                                     "taxonomy_depth": 7}, "h.json").groups[0].to_json()
