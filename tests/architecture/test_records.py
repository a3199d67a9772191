"""Stages read provenance and results only through the typed records (docs/architecture.md)."""

import re


from helpers import REPO


ROOT = REPO



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
