"""Stages read provenance and results only through the typed records (docs/architecture.md), and
the records check what they read by the fields' real types. That writers and readers agree on every
key is checked where each result is written: ``helpers.assert_results_read_back`` on the files of a
real run (tests/cli/test_demo.py, tests/metrics, tests/steering)."""

import dataclasses
import re
import typing
from typing import ClassVar, Optional

import pytest

from helpers import REPO as ROOT
from saevlm.data import artifacts as A


def test_stages_read_provenance_only_through_the_typed_objects():
    """No `.get("model", {})`-style chains on provenance or manifests outside data/manifest.py."""
    pattern = re.compile(r"provenance\.get\(|\.get\(\"provenance\"|manifest\.get\(|"
                         r"\.get\(\"(model|hook|tokens|dataset|sae)\", \{\}\)")
    offenders = []
    for f in (ROOT / "src" / "saevlm").rglob("*.py"):
        if f.name == "manifest.py":
            continue
        for no, line in enumerate(f.read_text().splitlines(), 1):
            if pattern.search(line) and "self.manifest.get" not in line:  # TopImagesStore: its own JSON
                offenders.append(f"{f.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_report_and_explorer_read_result_records_not_raw_keys():
    """report/ and explorer/ read result files through the typed records of saevlm.data.artifacts:
    no ``.get("key")`` on parsed JSON (HTTP headers and the environment aside), and no result file
    name written as a literal outside that module."""
    pattern = re.compile(r'\.get\("')
    names = re.compile(r'"(names|classes|ms|run|eval|steering_score|similarity_baseline)\.json"|'
                       r'"(labels|scores|image_ids)\.npy"|f"(top_images|hai_indices|hierarchy|uniqueness)_\{[^}]*\}(_\w+)?\.(npy|json)"')
    offenders = []
    for folder in ("report", "explorer"):
        for f in sorted((ROOT / "src" / "saevlm" / folder).glob("*.py")):
            if f.name == "templates.py":  # the page script's own URLSearchParams.get
                continue
            for no, line in enumerate(f.read_text().splitlines(), 1):
                if pattern.search(line) and not re.search(r"headers\.get|environ\.get|hosts\.get", line):
                    offenders.append(f"{f.relative_to(ROOT)}:{no}: {line.strip()}")
    for f in sorted((ROOT / "src" / "saevlm").rglob("*.py")):
        if f.name == "artifacts.py":
            continue
        for no, line in enumerate(f.read_text().splitlines(), 1):
            if names.search(line):
                offenders.append(f"{f.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@dataclasses.dataclass(frozen=True)
class _Spelled(A.Record):
    """A record whose annotations are real types spelled three ways (this module has no
    ``from __future__ import annotations``): the check must not depend on how a type is written."""

    KIND: ClassVar[str] = "test record"
    count: Optional[int] = None  # noqa: UP045 - the older spelling on purpose
    share: typing.Union[float, None] = None  # noqa: UP007
    label: "str | None" = None
    extra: dict = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("key,value", [("count", "3"), ("count", True), ("count", 2.5), ("share", "0.5"),
                                       ("label", 7)])
def test_record_fields_are_checked_by_their_real_types(key, value):
    with pytest.raises(A.ResultError, match=f"damaged test record \\('{key}'"):
        _Spelled.from_json({key: value}, "x.json")
    ok = _Spelled.from_json({"count": 3, "share": 1, "label": "a", "new": 1}, "x.json")
    assert (ok.count, ok.share, ok.label, ok.unknown_keys()) == (3, 1, "a", ["new"])


def test_every_result_record_has_its_file_name_in_the_catalog():
    """Each record of a whole JSON result is what ``record_for`` reads its catalog name with, so
    the read-back check above reaches it; the nested ones (a latent, a group, a pair) are not files."""
    nested = {A.MSUncertainty, A.LatentName, A.ConceptFMS, A.HierarchyGroup, A.StabilitySAE, A.StabilityPair,
              A.TrainerEntry, A.SourceStamp, A.MSInputs}
    records = {c for c in vars(A).values() if isinstance(c, type) and issubclass(c, A.Record) and c is not A.Record}
    names = {A.MS_JSON, A.NAMES, A.STEERING_SCORE, A.SIMILARITY_BASELINE, A.FMS_JSON, A.RUN_JSON, A.EVAL_JSON,
             A.STABILITY, A.CLASSES, A.hierarchy_json(16), A.uniqueness_json(16), A.top_images_json(16),
             "agreement.json"}
    assert {A.record_for(n) for n in names} == records - nested
    assert A.record_for(A.top_images_npy(16)) is None and A.record_for("manifest.json") is None


def test_a_writer_cannot_write_a_key_its_record_does_not_declare(tmp_path):
    """Record.write_json reads the data as readers will: an undeclared key or a wrongly typed value
    is refused and nothing is written; what passes is written exactly as given (None values kept)."""
    with pytest.raises(TypeError, match=r"MSSummary: keys no field declares: \['mean_ms'\]"):
        A.MSSummary.write_json(tmp_path / "ms.json", {"total": 4, "dead": 0, "mean_ms": 0.5})
    with pytest.raises(TypeError, match=r"HierarchyResult: keys no field declares: \['groups\[0\].lca'\]"):
        A.HierarchyResult.write_json(tmp_path / "h.json", {"groups": [{"group": 0, "size": 4, "lca": 2.0}]})
    with pytest.raises(A.ResultError, match="'dead' is '0'"):
        A.MSSummary.write_json(tmp_path / "ms.json", {"total": 4, "dead": "0"})
    assert not list(tmp_path.iterdir())
    A.MSSummary.write_json(tmp_path / "ms.json", {"total": 4, "dead": 0, "sae": None})
    import json
    assert json.loads((tmp_path / "ms.json").read_text()) == {"total": 4, "dead": 0, "sae": None}


def test_every_derived_result_records_its_source_as_one_record(tmp_path):
    """``source`` is a SourceStamp in every record that has one (read as that record, so a key it
    does not declare is refused at write time), and the stamp of a real store says when a result
    is stale: a re-written store (another finished time) or another shape."""
    import typing

    from saevlm.data.store import ActivationStore
    from saevlm.data.stamps import source_stamp, stale_reason
    from saevlm.synthetic import SyntheticConfig, run as make_world

    holders = {c for c in vars(A).values() if isinstance(c, type) and issubclass(c, A.Record)
               and "source" in {f.name for f in dataclasses.fields(c)}}
    assert holders == {A.NamesResult, A.FMSResult, A.UniquenessResult, A.HierarchyResult, A.TopImagesStamp}
    for c in holders:
        assert typing.get_type_hints(c)["source"] == typing.Optional[A.SourceStamp], c
    with pytest.raises(TypeError, match=r"keys no field declares: \['source.rows'\]"):
        A.UniquenessResult.write_json(tmp_path / "u.json", {"k": 4, "pairs_above": {}, "source": {"rows": 3}})
    assert not (tmp_path / "u.json").exists()
    # ms.json's inputs: both stamps are SourceStamps, checked the same way
    with pytest.raises(TypeError, match=r"keys no field declares: \['inputs.activations.rows'\]"):
        A.MSSummary.write_json(tmp_path / "ms.json", {"total": 1, "inputs": {"activations": {"rows": 3}}})
    ms = A.MSSummary.from_json({"inputs": {"activations": {"finished": "t", "path": "/a"},
                                           "embeddings": {"content_sha256": "e"}}})
    assert ms.activations_source == A.SourceStamp(finished="t", path="/a")
    assert ms.inputs.embeddings.content_sha256 == "e"

    make_world(SyntheticConfig(output_dir=str(tmp_path / "w"), num_train=64, num_val=32, dim=8, embed_dim=4))
    store = ActivationStore(tmp_path / "w" / "val")
    stamp = source_stamp(store)
    assert list(stamp) == list(A.SourceStamp.DERIVED_KEYS) and stamp["num_rows"] == store.num_rows
    assert stale_reason(stamp, store) is None
    assert "re-written since" in stale_reason({**stamp, "finished": "2000-01-01T00:00:00"}, store)
    assert "whose num_neurons was 3; it is now 8" in stale_reason({**stamp, "num_neurons": 3}, store)
    assert stale_reason({"num_rows": store.num_rows}, store) is None  # an older, shorter stamp
