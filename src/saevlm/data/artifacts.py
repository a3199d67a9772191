"""Every file a run holds, named once, and a typed record for each JSON result.

The names: a store folder holds ``manifest.json`` and its shards (docs/store-format.md), the
dataset's ``labels.npy`` / ``classes.json``, and the results computed from it: ``ms_<embedder>/``
(``ms.json``, ``scores.npy``), ``top_images_<k>.npy`` and friends, ``names.json``,
``hierarchy_<k>.json``, ``uniqueness_<k>.json``, ``fms/fms.json``. A training run holds ``run.json``
and ``trainer_<i>/`` (``ae.pt``, ``config.json``, ``eval.json``); a steering run
``steering_score.json``, ``scores.csv`` and ``labels.csv``.

The records (frozen dataclasses with ``from_json`` / ``to_json``, like :mod:`saevlm.data.manifest`)
are what the report and the explorer read: ``NamesResult.from_file(path).latents[17].purity``, never
a chain of ``.get("...")``. A record keeps the keys it does not name in ``extra`` (written back
by ``to_json``), so files from newer or older saevlm versions still read. A damaged file is a
:class:`ResultError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from saevlm.errors import UserError

# -- stores
MANIFEST = "manifest.json"
LABELS = "labels.npy"
CLASSES = "classes.json"
IMAGE_IDS = "image_ids.npy"
EXPLORER_CACHE = ".explorer_cache"

# -- results beside a store
MS_PREFIX = "ms"  # ms_<embedder>/ (or the older ms/)
MS_JSON = "ms.json"
MS_SCORES = "scores.npy"
MS_SE = "scores_se.npy"  # per neuron: the jackknife standard error of its MS over images
MS_CI95 = "scores_ci95.npy"  # per neuron: [low, high] of its 95 % interval
MS_IMAGE_DELTAS = "image_deltas.npy"  # per image: change of the mean MS when it is left out (paired comparisons)
MS_STATS = "metric_stats.txt"
NAMES = "names.json"
STABILITY = "stability.json"  # saevlm stability: latents of seed-SAEs matched
FMS_JSON = "fms/fms.json"


def ms_dir_name(embedder: str) -> str:
    return f"{MS_PREFIX}_{embedder}"


TOP_IMAGES_PREFIX = "top_images_"
HIERARCHY_PREFIX = "hierarchy_"
UNIQUENESS_PREFIX = "uniqueness_"


def top_images_npy(k: int) -> str:
    return f"{TOP_IMAGES_PREFIX}{k}.npy"


def top_images_values_npy(k: int) -> str:
    return f"{TOP_IMAGES_PREFIX}{k}_values.npy"


def top_images_kth_npy(k: int) -> str:
    return f"{TOP_IMAGES_PREFIX}{k}_kth_value.npy"


def top_images_json(k: int) -> str:
    return f"{TOP_IMAGES_PREFIX}{k}.json"


def hai_indices_npy(k: int) -> str:
    """The authors' ``find_hai_indices.py`` name (their order: the highest last)."""
    return f"hai_indices_{k}.npy"


def hai_worst_npy(k: int) -> str:
    return f"hai_indices_{k}_worst.npy"


def hierarchy_json(k: int) -> str:
    return f"{HIERARCHY_PREFIX}{k}.json"


def uniqueness_json(k: int) -> str:
    return f"{UNIQUENESS_PREFIX}{k}.json"


# -- training and steering runs
RUN_JSON = "run.json"
EVAL_JSON = "eval.json"
AE_PT = "ae.pt"  # a trainer folder's weights (dictionary_learning's name)
TRAINER_CONFIG = "config.json"  # ... and its config (dictionary_learning's format)
RESUME_PT = "resume.pt"  # ... and the state a stopped training resumes from
STEERING_SUMMARY_OLD = "summary.json"  # what steering-score wrote before steering_score.json
STEERING_SCORE = "steering_score.json"
STEERING_SCORES_CSV = "scores.csv"
STEERING_LABELS_CSV = "labels.csv"
SIMILARITY_BASELINE = "similarity_baseline.json"
EVAL_CLASS_NAMES = "class_names.json"  # make-eval-folder: the class of each image of an eval folder

# -- other outputs
WORLD_JSON = "world.json"  # the synthetic world's description (saevlm synthetic)
WORLD_DIRECTIONS = "directions.npy"  # ... and its ground-truth concept directions
FIGURES_INDEX = "index.json"  # visualize: the figures written, in order
AGREEMENT_GLOB = "agreement*.json"


def _json_types(hint: Any) -> tuple[type, ...] | None:
    """The JSON types a field of type ``hint`` (the resolved annotation, not its string) may hold:
    ``int`` an int, ``float`` an int or a float, ``str``, ``bool`` and ``dict`` themselves, a union
    any of its members (None aside); None where the field is not a scalar (tuples, records)."""
    import types
    import typing

    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [_json_types(a) for a in typing.get_args(hint) if a is not type(None)]
        if not members or any(m is None for m in members):
            return None
        return tuple(dict.fromkeys(t for m in members for t in m))
    return {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,)}.get(hint)


def _record_type(hint: Any) -> type | None:
    """The record class a field holds (``SourceStamp | None`` -> SourceStamp), else None."""
    import types
    import typing

    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = members[0] if len(members) == 1 else None
    return hint if isinstance(hint, type) and issubclass(hint, Record) else None


class ResultError(UserError):
    """A result file that cannot be read as its record (names the file and the key)."""


@dataclass(frozen=True)
class Record:
    """Base of the result records: fields from JSON keys of the same name; other keys in ``extra``."""

    KIND: ClassVar[str] = "result"
    REQUIRED: ClassVar[tuple[str, ...]] = ()  # keys without which the file is not this kind of result
    KEYS: ClassVar[dict[str, str]] = {}  # field -> its JSON key, where the key is not a Python name

    @classmethod
    def from_json(cls, data: Any, where: str | Path = "result"):
        cls._check_kind(data, where)
        names, scalars, nested = cls._spec()
        if cls.KEYS:
            data = {cls._FIELD_OF.get(k, k): v for k, v in data.items()}
        values = {k: v for k, v in data.items() if k in names}
        for key, record in nested.items():  # a field typed as a record is read as that record
            if isinstance(values.get(key), dict):
                values[key] = record.from_json(values[key], f"{where} {key}")
        cls._check_types(values, scalars, where)
        try:
            return cls(**cls._convert(values, where), extra={k: v for k, v in data.items() if k not in names})
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise ResultError(f"{where}: damaged {cls.KIND} ({type(err).__name__}: {err})") from None

    @classmethod
    def _check_kind(cls, data: Any, where) -> None:
        """A JSON object with every required key, or a ResultError saying it is not this kind."""
        if not isinstance(data, dict):
            raise ResultError(f"{where}: not a {cls.KIND} (a JSON object expected)")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise ResultError(f"{where}: not a {cls.KIND} (no {missing[0]!r})")

    @classmethod
    def _check_types(cls, values: dict, scalars: dict, where) -> None:
        """Each value of a plain field has one of its JSON types (None always reads as unset)."""
        for key, value in values.items():
            expected = scalars.get(key)
            if expected is None or value is None:
                continue
            if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
                raise ResultError(f"{where}: damaged {cls.KIND} ({key!r} is {value!r}, expected "
                                  f"{' or '.join(t.__name__ for t in expected)})")

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls._FIELD_OF = {key: name for name, key in cls.KEYS.items()}

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        """Nested records built from their JSON (override)."""
        return values

    @classmethod
    def _spec(cls) -> tuple[frozenset, dict, dict]:
        """(field names, {field: JSON types allowed}, {field: the record class it holds}) of this
        record class, worked out once (a names.json has 65,536 latent records)."""
        spec = cls.__dict__.get("_spec_cache")
        if spec is None:
            import typing

            names = frozenset(f.name for f in dataclasses.fields(cls) if f.name != "extra")
            hints = typing.get_type_hints(cls)  # the real types (annotations are strings in this module)
            allowed = {n: _json_types(hints[n]) for n in names}
            nested = {n: r for n in names if (r := _record_type(hints[n])) is not None}
            spec = (names, {n: a for n, a in allowed.items() if a is not None}, nested)
            type.__setattr__(cls, "_spec_cache", spec)
        return spec

    @classmethod
    def matches(cls, data: Any) -> bool:
        """Whether a parsed file is this kind of result (has every required key)."""
        return isinstance(data, dict) and all(k in data for k in cls.REQUIRED)

    @classmethod
    def from_file(cls, path: str | Path):
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise ResultError(f"{path.name}: unreadable ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ResultError(f"{path.name}: not valid JSON (line {e.lineno}); rewrite it with the command "
                              f"that made it") from None
        return cls.from_json(data, path)

    def to_json(self) -> dict:
        out = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = _plain(getattr(self, f.name))
            if v is not None or f.name in self.REQUIRED:
                out[self.KEYS.get(f.name, f.name)] = v
        return out

    @classmethod
    def write_json(cls, path: str | Path, data: dict) -> None:
        """The one way a result file is written: ``data`` is first read as this record, exactly as
        a reader will read it (every value's type checked against its field), and a key that no
        field declares is refused, a writer's mistake that readers would never see; then ``data``
        is written as given (atomically), so the file keeps the keys it always had, None values
        included."""
        from saevlm.data.atomic import atomic_write_json

        unknown = cls.from_json(data, Path(path).name).unknown_keys()
        if unknown:
            raise TypeError(f"{cls.__name__}: keys no field declares: {unknown} (declare them in "
                            f"saevlm/data/artifacts.py)")
        atomic_write_json(path, data)

    def unknown_keys(self) -> list[str]:
        """Keys of the file this record was read from that no record field declares, here and in
        the records nested in it ("groups[0].ms_max"): empty when writer and reader agree."""
        found = [k for k in self.extra]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            items = [(f.name, v)] if isinstance(v, Record) else \
                [(f"{f.name}[{i}]", x) for i, x in enumerate(v) if isinstance(x, Record)] \
                if isinstance(v, (tuple, list)) else []
            found += [f"{where}.{k}" for where, rec in items for k in rec.unknown_keys()]
        return found


def _plain(v: Any) -> Any:
    """A record's value as JSON has it: records as objects, tuples as lists."""
    if isinstance(v, Record):
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class SourceStamp(Record):
    """Which version of which store a result was computed from: every derived result records it
    (``source`` in ``top_images_<k>.json``, ``names.json``, ``fms.json``, ``hierarchy_<k>.json``,
    ``uniqueness_<k>.json``; ``inputs.activations`` / ``inputs.embeddings`` in ``ms.json``), and
    :meth:`stale_reason` compares it with the store as it is now. A store re-written later gets a
    new ``finished`` time and write id (and codes, maybe another SAE), so an older result is
    recognised as stale wherever the run now lies (paths are recorded, never compared)."""

    KIND: ClassVar[str] = "source stamp"
    format: str | None = None
    write_id: str | None = None
    finished: str | None = None
    content_sha256: str | None = None
    image_ids_sha256: str | None = None
    num_rows: int | None = None
    num_neurons: int | None = None
    sae: str | None = None  # the SAE the codes came from (None: activations)
    path: str | None = None  # ms.json's inputs only: where the store was
    model: str | None = None  # ms.json's inputs only: its model, as its provenance names it
    extra: dict = field(default_factory=dict)

    # the keys each kind of result writes, in the order they have always been written
    DERIVED_KEYS: ClassVar[tuple[str, ...]] = ("format", "write_id", "finished", "content_sha256",
                                               "image_ids_sha256", "num_rows", "num_neurons", "sae")
    MS_INPUT_KEYS: ClassVar[tuple[str, ...]] = ("path", "format", "content_sha256", "image_ids_sha256", "finished",
                                                "write_id", "model", "sae")

    @classmethod
    def of(cls, store) -> SourceStamp:
        """The stamp of ``store`` (any store: activations, codes, top images) as it is now."""
        m, prov = store.manifest, store.provenance
        return cls(format=m.format, write_id=m.write_id, finished=m.finished,
                   content_sha256=m.content_sha256, image_ids_sha256=m.image_ids_sha256,
                   num_rows=int(store.num_rows), num_neurons=int(store.num_neurons),
                   sae=prov.sae.path if prov.sae is not None else None, path=str(Path(store.path).resolve()),
                   model=prov.model.source if prov.model is not None else None)

    def as_json(self, keys: tuple[str, ...] = DERIVED_KEYS) -> dict:
        """The stamp as a result writes it: these keys, None values included."""
        return {k: getattr(self, k) for k in keys}

    def stale_reason(self, now: SourceStamp) -> str | None:
        """Why a result with this stamp does not describe the store stamped ``now`` (None: it does;
        keys this stamp does not record, as in older results, are not compared)."""
        for key in self.DERIVED_KEYS:
            was, is_ = getattr(self, key), getattr(now, key)
            if was is not None and is_ is not None and was != is_:
                if key in ("finished", "write_id"):
                    return (f"computed from the version of the store finished at {self.finished}; the "
                            f"store was re-written since (finished at {now.finished})")
                return f"computed from a store whose {key} was {was!r}; it is now {is_!r}"
        return None


@dataclass(frozen=True)
class MSInputs(Record):
    """``ms.json``'s ``inputs``: the stores the scores were computed from (results from other
    inputs are never replaced silently)."""

    KIND: ClassVar[str] = "MS inputs (ms.json)"
    activations: SourceStamp | None = None
    embeddings: SourceStamp | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MSUncertainty(Record):
    """``ms.json``'s ``uncertainty``: the delete-one jackknife over images (``ms --uncertainty``)."""

    KIND: ClassVar[str] = "MS uncertainty (ms.json)"
    method: str | None = None
    median_se: float | None = None
    wide_intervals: int | None = None  # scored neurons whose 95 % interval is wider than 0.2
    undefined_without_one_image: int | None = None
    mean_se: float | None = None  # of the mean MS over scored neurons
    mean_ci95: tuple | None = None  # [low, high]
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MSSummary(Record):
    """``ms_<embedder>/ms.json``: the MS of every neuron, summarised (``saevlm ms``)."""

    KIND: ClassVar[str] = "MS result (ms.json)"
    total: int | None = None
    dead: int | None = None
    scored: int | None = None
    mean: float | None = None
    std: float | None = None
    scored_active_on_fewer_than_16: int | None = None
    dead_constant: int | None = None
    dead_one_image: int | None = None
    top10: tuple = ()  # (neuron, MS) of the best ten
    bottom10: tuple = ()
    # the best ten among latents active on >= 16 images (SAE codes only; the explorer's default filter)
    top10_active_on_16_or_more: tuple | None = None
    embedder_note: str | None = None  # what a reader should know about E (the same encoder, a store kind)
    uncertainty: MSUncertainty | None = None  # the jackknife over images (ms --uncertainty)
    embeddings_model: str | None = None
    activations_dir: str | None = None
    inputs: MSInputs | None = None
    kind: str | None = None  # "sae latents" or "raw neurons"
    definition: str | None = None  # the equations computed
    num_images: int | None = None
    embeddings_path: str | None = None
    model: str | None = None  # the scored store's model, as its provenance names it
    hook: dict | None = None  # its block and attachment point
    sae: dict | None = None  # the SAE the codes came from (None: raw neurons)
    files: dict | None = None  # size and CRC-32 of each .npy written beside it
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        for key in ("top10", "bottom10"):
            values[key] = tuple(tuple(x) for x in values.get(key) or ())
        if isinstance(values.get("uncertainty"), dict):
            values["uncertainty"] = MSUncertainty.from_json(values["uncertainty"], f"{where} uncertainty")
        if values.get("top10_active_on_16_or_more") is not None:
            values["top10_active_on_16_or_more"] = tuple(tuple(x) for x in values["top10_active_on_16_or_more"])
        return values

    @property
    def scored_count(self) -> int | None:
        if self.scored is not None:
            return self.scored
        return self.total - self.dead if self.total is not None and self.dead is not None else None

    @property
    def activations_source(self) -> SourceStamp | None:
        """The activations' stamp these scores were computed from (``inputs.activations``)."""
        return self.inputs.activations if self.inputs is not None else None


@dataclass(frozen=True)
class LatentName(Record):
    """One latent of ``names.json``: its three best words with similarities, and the labels of its
    top images where it is active (``n_active`` of them)."""

    KIND: ClassVar[str] = "latent name"
    id: int = -1
    names: tuple[tuple[str, float], ...] = ()
    margin: float | None = None
    n_active: int | None = None
    purity: float | None = None
    entropy_bits: float | None = None
    label: str | int | None = None
    # the detection score (AUROC) of the name on held-out images, of a random other latent's name
    # (the baseline), that latent, and [positive, negative] images (saevlm name; absent: unscored)
    detection: float | None = None
    detection_baseline: float | None = None
    detection_baseline_of: int | None = None
    detection_n: tuple[int, ...] | None = None
    detection_se: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        values["names"] = tuple((str(w), float(s)) for w, s in values.get("names") or ())
        if values.get("detection_n") is not None:
            values["detection_n"] = tuple(int(v) for v in values["detection_n"])
        return values

    @property
    def name(self) -> str:
        return self.names[0][0] if self.names else ""


def _latent_name_fast(r: Any) -> "LatentName":
    """A LatentName built directly from its JSON object, without the generic type checks; a
    TypeError or ValueError on anything unexpected (the caller then reads it the checked way)."""
    if not isinstance(r, dict) or not isinstance(r.get("id"), int):
        raise TypeError
    known = LatentName._spec()[0]
    detection_n = r.get("detection_n")
    return LatentName(
        id=r["id"], names=tuple((str(w), float(x)) for w, x in r.get("names") or ()),
        margin=r.get("margin"), n_active=r.get("n_active"), purity=r.get("purity"),
        entropy_bits=r.get("entropy_bits"), label=r.get("label"), detection=r.get("detection"),
        detection_baseline=r.get("detection_baseline"), detection_baseline_of=r.get("detection_baseline_of"),
        detection_n=None if detection_n is None else tuple(int(v) for v in detection_n),
        detection_se=r.get("detection_se"),
        extra={} if r.keys() <= known else {k: v for k, v in r.items() if k not in known})


@dataclass(frozen=True)
class NamesResult(Record):
    """``names.json`` (``saevlm name``)."""

    KIND: ClassVar[str] = "names result (names.json)"
    REQUIRED: ClassVar[tuple[str, ...]] = ("latents",)
    FORMAT: ClassVar[str] = "saevlm-names"
    format: str | None = None
    k: int | None = None
    # who wrote the names: clip (nearest vocabulary word; older files say nothing), mllm, given
    explainer: str | None = None
    mllm_model: str | None = None
    prompt: str | None = None
    names_file: str | None = None
    template: str | None = None
    vocab_source: str | None = None
    vocab_size: int | None = None
    text_embeddings: str | None = None
    image_embeddings: str | None = None
    definition: str | None = None
    source: SourceStamp | None = None
    latents: tuple[LatentName, ...] = ()
    # the MLLM explainer's decoding: tokens, "greedy", the torch seed
    max_new_tokens: int | None = None
    decoding: str | None = None
    seed: int | None = None
    detection_seed: int | None = None  # the random images and baseline names of the detection score
    from_activating_images: bool | None = None  # absent in older files: see named_where_active
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        # 65,536 latents at the paper's x64 width: the records are made directly (a third of the
        # time of LatentName.from_json each); any surprise falls back to it, which names the damage
        latents = []
        for i, r in enumerate(values.get("latents") or ()):
            try:
                latents.append(_latent_name_fast(r))
            except (TypeError, ValueError):
                latents.append(LatentName.from_json(r, f"{where} latent {i}"))
        values["latents"] = tuple(latents)
        return values

    @property
    def named_where_active(self) -> bool:
        """Named from the top images where each latent is active (saevlm since the explorer's
        second round, which says so); older files were named from padded top-k lists."""
        if self.from_activating_images is not None:
            return self.from_activating_images
        return all(r.n_active is not None for r in self.latents if r.names)


@dataclass(frozen=True)
class SteeringScore(Record):
    """``steering_score.json`` (``saevlm steering-score``; ``summary.json`` of older versions)."""

    KIND: ClassVar[str] = "steering score"
    REQUIRED: ClassVar[tuple[str, ...]] = ("steered",)
    steered: bool = True
    protocol: str | None = None
    mean: float | None = None
    std: float | None = None
    neurons: int | None = None
    images: int | None = None
    alpha: float | None = None
    sae: str | None = None
    sae_weights: dict | None = None  # size and CRC-32 of the SAE's weights file
    sae_dict_size: int | None = None
    llava_model: str | None = None  # the MLLM that answered
    mllm_family: str | None = None  # its family (LLaVA-1.5 when not recorded: older results)
    kind: str | None = None
    layer: int | None = None  # the vision block steered
    mode: str | None = None  # reconstruct or add
    zero_others: bool | None = None
    prompt: str | None = None
    word_rule: str | None = None  # how the answer's word is read
    target: str | None = None  # what the answer is compared with
    std_over: str | None = None
    clip_model: str | None = None
    processor_backend: str | None = None
    paper: dict | None = None  # the paper's numbers for the same protocol
    extra: dict = field(default_factory=dict)

    @property
    def mllm(self) -> str:
        """The family that answered, for headings (results before other families: LLaVA-1.5)."""
        return self.mllm_family or "LLaVA-1.5"


@dataclass(frozen=True)
class SimilarityBaseline(Record):
    """``similarity_baseline.json`` (``saevlm similarity-baseline``): the steering score's bounds."""

    KIND: ClassVar[str] = "similarity baseline"
    REQUIRED: ClassVar[tuple[str, ...]] = ("true_class_names",)
    images: int | None = None
    true_class_names: dict = field(default_factory=dict)
    shuffled_class_names: dict = field(default_factory=dict)
    kind: str | None = None
    protocol: str | None = None
    clip_model: str | None = None
    processor_backend: str | None = None
    paper: dict | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ConceptFMS(Record):
    """One concept of ``fms.json``: its root latent (the best single detector) and FMS."""

    KIND: ClassVar[str] = "concept FMS"
    REQUIRED: ClassVar[tuple[str, ...]] = ("fms",)
    KEYS: ClassVar[dict[str, str]] = {"global_": "global"}
    concept: str | int | None = None
    root: int = -1
    fms: float = float("nan")
    acc0: float | None = None
    positives: int | None = None
    acc_1: float | None = None  # accuracy of the best two latents together
    acc_cum: tuple | None = None  # accuracy of the best 1, 2, ... latents
    local: float | None = None
    global_: float | None = None  # "global" in the file
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FMSResult(Record):
    """``fms/fms.json`` (``saevlm fms``)."""

    KIND: ClassVar[str] = "FMS result (fms.json)"
    REQUIRED: ClassVar[tuple[str, ...]] = ("fms",)
    fms: float = float("nan")
    mean_acc0: float | None = None
    mean_local: float | None = None
    mean_global: float | None = None
    concepts: int | None = None
    ms_mean: float | None = None
    per_concept: tuple[ConceptFMS, ...] = ()
    codes_finished: str | None = None
    ms_source: str | None = None
    activations_dir: str | None = None
    source: SourceStamp | None = None
    definition: str | None = None
    p: int | None = None  # latents in the local score
    n: int | None = None  # latents in the cumulative accuracy
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        values["per_concept"] = tuple(ConceptFMS.from_json(c, f"{where} concept {i}")
                                      for i, c in enumerate(values.get("per_concept") or ()))
        return values


@dataclass(frozen=True)
class UniquenessResult(Record):
    """``uniqueness_<k>.json`` (``saevlm uniqueness``)."""

    KIND: ClassVar[str] = "uniqueness result"
    REQUIRED: ClassVar[tuple[str, ...]] = ("pairs_above",)
    k: int | None = None
    neurons: int = 0
    left_out_near_dead: int = 0
    pairs: int = 0
    pairs_above: dict = field(default_factory=dict)
    source: SourceStamp | None = None
    most_similar: tuple | None = None  # [latent, latent, overlap] of the most overlapping pairs
    least_similar: tuple | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HierarchyGroup(Record):
    KIND: ClassVar[str] = "hierarchy group"
    group: int = 0
    size: int = 0
    neurons_scored: int | None = None  # the group's latents not left out (None: an older result)
    left_out_near_dead: float = 0.0
    lca_depth_mean_rounded: float | None = None
    lca_depth_majority: float | None = None
    ms_mean: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HierarchyResult(Record):
    """``hierarchy_<k>.json`` (``saevlm hierarchy``): LCA depth of top images per Matryoshka group."""

    KIND: ClassVar[str] = "hierarchy result"
    REQUIRED: ClassVar[tuple[str, ...]] = ("groups",)
    taxonomy_depth: int | None = None
    groups: tuple[HierarchyGroup, ...] = ()
    source: SourceStamp | None = None
    k: int | None = None
    group_sizes: tuple | None = None
    taxonomy_source: str | None = None
    pairs_per_neuron: int | None = None
    per_neuron_mean_rounded: tuple | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        values["groups"] = tuple(HierarchyGroup.from_json(g, f"{where} group {i}")
                                 for i, g in enumerate(values.get("groups") or ()))
        return values


@dataclass(frozen=True)
class AgreementResult(Record):
    """``agreement*.json`` (``saevlm benchmark-agreement``): per metric, agreement per bin."""

    KIND: ClassVar[str] = "agreement result"
    REQUIRED: ClassVar[tuple[str, ...]] = ("metrics",)
    metrics: dict = field(default_factory=dict)
    benchmark: str | None = None
    pairs: int | None = None
    r_user_rule: str | None = None
    paper_ms_dino: dict | None = None  # the paper's agreement per bin for MS with DINOv2
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StabilitySAE(Record):
    """One SAE of ``stability.json``."""

    KIND: ClassVar[str] = "stability SAE"
    path: str | None = None
    seed: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StabilityPair(Record):
    """One pair of SAEs of ``stability.json``: shares and correlations of their matched latents."""

    KIND: ClassVar[str] = "stability pair"
    a: int = -1
    b: int = -1
    matched_share: float | None = None
    median_cosine: float | None = None
    unplaced: int | None = None
    coactivation_agreement: float | None = None
    ms_pearson: float | None = None
    ms_spearman: float | None = None
    ms_pairs: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StabilityResult(Record):
    """``stability.json`` (``saevlm stability``): latents of seed-SAEs matched, per pair."""

    KIND: ClassVar[str] = "stability result (stability.json)"
    REQUIRED: ClassVar[tuple[str, ...]] = ("pairs", "saes")
    FORMAT: ClassVar[str] = "saevlm-stability"
    format: str | None = None
    saes: tuple[StabilitySAE, ...] = ()
    dict_size: int | None = None
    threshold: float | None = None
    candidates: int | None = None
    pairs: tuple[StabilityPair, ...] = ()
    mean_ms: tuple[float, ...] | None = None
    mean_ms_seed_std: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        values["saes"] = tuple(StabilitySAE.from_json(x, f"{where} sae {i}")
                               for i, x in enumerate(values.get("saes") or ()))
        values["pairs"] = tuple(StabilityPair.from_json(x, f"{where} pair {i}")
                                for i, x in enumerate(values.get("pairs") or ()))
        if values.get("mean_ms") is not None:
            values["mean_ms"] = tuple(float(v) for v in values["mean_ms"])
        return values


@dataclass(frozen=True)
class TopImagesStamp(Record):
    """``top_images_<k>.json``: what the top images were computed from."""

    KIND: ClassVar[str] = "top-images stamp"
    REQUIRED: ClassVar[tuple[str, ...]] = ("source",)
    k: int | None = None
    neurons: int | None = None
    source: SourceStamp | None = None
    files: dict | None = None  # size and CRC-32 of each .npy written beside it
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerEntry(Record):
    KIND: ClassVar[str] = "trainer entry"
    dir: str = ""
    arch: str = ""
    expansion_factor: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainRun(Record):
    """``run.json`` of ``saevlm train``: what it trains (identity) and whether it finished."""

    KIND: ClassVar[str] = "training run (run.json)"
    complete: bool = False
    identity: dict = field(default_factory=dict)
    norm_factor: float | None = None
    validation: str | None = None  # where the evaluation rows came from
    engine: dict | None = None  # per trainer: sparse or dictionary_learning
    precision: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def trainers(self) -> tuple[TrainerEntry, ...]:
        return tuple(TrainerEntry.from_json(t, f"run.json trainer {i}")
                     for i, t in enumerate(self.identity.get("trainers") or ()))

    @property
    def activations_provenance(self) -> dict | None:
        return self.identity.get("activations_provenance")


@dataclass(frozen=True)
class EvalResult(Record):
    """``trainer_<i>/eval.json``: reconstruction and sparsity on the validation rows."""

    KIND: ClassVar[str] = "evaluation (eval.json)"
    REQUIRED: ClassVar[tuple[str, ...]] = ("r2",)
    r2: float = float("nan")
    r2_authors: float | None = None
    l0: float = float("nan")
    dead_fraction: float = float("nan")
    dense_fraction: float = float("nan")
    r2_authors_no_threshold: float | None = None
    r2_authors_batches: int | None = None
    step: int | None = None
    validation: str | None = None
    rows: int | None = None
    mse: float | None = None
    l2_loss: float | None = None
    dict_size: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Classes(Record):
    """``classes.json`` beside a store: the dataset's class folders, their names, and for
    iNat-style folders the taxonomy (one list of level names per class)."""

    KIND: ClassVar[str] = "class list (classes.json)"
    classes: tuple[str, ...] = ()
    names: tuple[str, ...] | None = None
    taxonomy: tuple[tuple[str, ...], ...] | None = None
    taxonomy_levels: tuple[str, ...] | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def _convert(cls, values: dict, where) -> dict:
        values["classes"] = tuple(str(c) for c in values.get("classes") or ())
        if values.get("names") is not None:
            values["names"] = tuple(str(n) for n in values["names"])
        if values.get("taxonomy") is not None:
            values["taxonomy"] = tuple(tuple(str(x) for x in t) for t in values["taxonomy"])
        return values

    def display_names(self) -> list[str]:
        """A label per class as people read it: the class name, for iNat the species (the last
        taxonomy level, not the folder name), else the folder."""
        if not self.names and self.taxonomy:
            return [t[-1] if t else c for t, c in zip(self.taxonomy, self.classes)]
        return list(self.names or self.classes)


# the record of each JSON result, by its file name in the catalog above (names with a k or a suffix
# by their prefix): what a reader reads it with, and what tests read every written result back with
_RECORD_OF_NAME: dict[str, type[Record]] = {
    MS_JSON: MSSummary, NAMES: NamesResult, STEERING_SCORE: SteeringScore, SIMILARITY_BASELINE: SimilarityBaseline,
    Path(FMS_JSON).name: FMSResult, RUN_JSON: TrainRun, EVAL_JSON: EvalResult, STABILITY: StabilityResult,
    CLASSES: Classes}
_RECORD_OF_PREFIX: dict[str, type[Record]] = {
    HIERARCHY_PREFIX: HierarchyResult, UNIQUENESS_PREFIX: UniquenessResult, TOP_IMAGES_PREFIX: TopImagesStamp,
    AGREEMENT_GLOB.split("*")[0]: AgreementResult}


def record_for(path: str | Path) -> type[Record] | None:
    """The record class a result file of this name is read with, or None (not a JSON result)."""
    name = Path(path).name
    if name in _RECORD_OF_NAME:
        return _RECORD_OF_NAME[name]
    if name.endswith(".json"):
        for prefix, cls in _RECORD_OF_PREFIX.items():
            if name.startswith(prefix):
                return cls
    return None
