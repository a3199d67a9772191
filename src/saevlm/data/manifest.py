"""The schema of what stores record: typed, frozen views of ``manifest.json`` and its provenance.

Every stage hands the next one a store whose manifest says where its rows came from (model, hook
point, token selection, dataset and image order, the SAE for code stores). This module is the
one place that knows those keys: :class:`Provenance` and :class:`Manifest` are built from the
JSON with ``from_json`` (checking types, one line naming the key when something is wrong) and
turned back into JSON with ``to_json``; stages ask questions of the objects (``p.hook.layer``,
``p.sae.group_sizes``) and compare them with the one :meth:`Provenance.compatible_with`.

Keys this code does not know are kept (``extra``) and written back unchanged, so a store written
by a newer or older saevlm keeps every field it had. The format is specified in
docs/store-format.md; schema version 1 covers every store saevlm has written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from saevlm.errors import UserError

SCHEMA_VERSION = 2
# Version 2 (this saevlm): every finished store carries ``seal_sha256``, which also covers the
# checksums of labels.npy / classes.json / image_ids.npy (``file_checksums``); one without it is
# refused. Version 1 stores (written before the seal) are read without it, with a note.
READABLE_SCHEMAS = (1, 2)
SEALED_SINCE = 2

# what each comparison aspect of two provenances looks at (see Provenance.compatible_with)
ASPECTS = ("model", "hook", "tokens", "dataset")


class ManifestError(ValueError):
    """A key of a manifest or provenance has the wrong type (the caller names the file)."""


def _check(value: Any, types: tuple[type, ...], where: str) -> Any:
    if value is None or (isinstance(value, types) and not (isinstance(value, bool) and bool not in types)):
        return value
    raise ManifestError(f"{where} is {value!r}, expected {' or '.join(t.__name__ for t in types)}")


@dataclass(frozen=True)
class _Section:
    """A provenance section: typed fields plus every other recorded key in ``extra``.

    ``from_json`` accepts a missing section or missing keys (old or hand-made stores): they read
    as None. ``to_json`` writes the ``ALWAYS`` keys even when None (as saevlm always has) and the
    others only when set, so a manifest read and written back keeps its keys."""

    NAME: ClassVar[str] = ""
    TYPES: ClassVar[dict[str, tuple[type, ...]]] = {}
    ALWAYS: ClassVar[tuple[str, ...]] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=True)

    @classmethod
    def from_json(cls, d: Any, where: str = ""):
        where = where or cls.NAME
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ManifestError(f"{where} is {d!r}, expected an object")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: _check(d.get(k), cls.TYPES.get(k, (object,)), f"{where}.{k}") for k in known}
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is not None or f.name in self.ALWAYS:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return {**out, **self.extra}

    def __bool__(self) -> bool:
        return any(v is not None for k, v in dataclasses.asdict(self).items() if k != "extra") or bool(self.extra)


@dataclass(frozen=True)
class ModelInfo(_Section):
    """The vision encoder: display name and the source it was loaded from (hub id, open_clip
    spec, local path). ``extra``: backend, widths, class name and config summary."""

    NAME: ClassVar[str] = "provenance.model"
    TYPES: ClassVar[dict] = {"name": (str,), "source": (str,)}
    ALWAYS: ClassVar[tuple] = ("name", "source")
    name: str | None = None
    source: str | None = None

    @property
    def label(self) -> str:
        """The name to show in titles and tables: a hub id or short name as it is, a local path
        by its folder name (no absolute paths of the machine in pages)."""
        return display_name(self.name or self.source or "?")


SEALED_KEYS = ("format", "dim", "dtype", "num_rows", "num_images", "shards", "provenance", "image_ids_sha256",
               "content_sha256")
# since schema version 2 the seal also covers the store's other files and its version
SEALED_KEYS_V2 = SEALED_KEYS + ("schema_version", "files", "file_checksums", "k")  # not write_id: reruns seal alike


def manifest_seal(m: dict) -> str:
    """SHA-256 of a manifest's content keys (shards with their checksums, provenance, the
    checksums of its labels and class list, ...), written by the store's writer when it finishes:
    a shard entry edited afterwards (a shard copied in from another store together with its
    checksum) no longer matches."""
    import hashlib
    import json

    keys = SEALED_KEYS_V2 if _schema(m) >= SEALED_SINCE else SEALED_KEYS
    body = {k: m.get(k) for k in keys}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _schema(m: dict) -> int:
    v = m.get("schema_version")
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


_UNSEALED_NOTED: set[str] = set()


def check_seal(m: dict, where: str) -> None:
    """Refuse a manifest whose sealed content changed after its writer sealed it, and a finished
    store of schema version 2 or later without its seal (deleting the seal must not turn the check
    off). Unsealed stores of version 1, from an older saevlm, are read with a note."""
    import sys

    seal = m.get("seal_sha256")
    if seal is None:
        if not m.get("complete"):
            return  # the writer seals when it finishes
        if _schema(m) >= SEALED_SINCE:
            raise UserError(f"{where}: has no seal_sha256, which every finished store of schema version "
                            f"{_schema(m)} carries: the key was deleted, so its shard list and checksums cannot be "
                            f"trusted. Re-create the store (rerun its command with --overwrite)")
        if where not in _UNSEALED_NOTED:
            _UNSEALED_NOTED.add(where)
            print(f"note: {where}: written before stores were sealed (schema_version {m.get('schema_version')}); "
                  f"an edited shard list or checksum cannot be detected", file=sys.stderr)
        return
    if manifest_seal(m) != seal:
        raise UserError(f"{where}: its shard list, checksums or provenance changed after the store was written "
                        f"(seal_sha256 mismatch): a shard entry or file checksum was edited or copied in from "
                        f"another store. Re-create the store (rerun its command with --overwrite)")


def same_block(a: Sequence[float], b: Sequence[float]) -> bool:
    """Two ``block_sample`` lists from the same weights, up to bf16 rounding."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    return bool(np.allclose(a, b, rtol=1e-2, atol=1e-3 * max(float(np.abs(a).max(initial=0.0)), 1e-12)))


def display_name(name: str) -> str:
    """``/home/me/models/dinov2-s`` -> ``dinov2-s``; ``openai/clip-vit-base-patch32`` unchanged."""
    if name.startswith(("/", "~", "./", "../", "local-dir:")):
        return Path(name.split("local-dir:")[-1].rstrip("/")).name or name
    return name


@dataclass(frozen=True)
class HookInfo(_Section):
    """Where the activations were read: attachment point and layer (-1 = none / last)."""

    NAME: ClassVar[str] = "provenance.hook"
    TYPES: ClassVar[dict] = {"attachment_point": (str,), "layer": (int,)}
    ALWAYS: ClassVar[tuple] = ("attachment_point", "layer")
    attachment_point: str | None = None
    layer: int | None = None


@dataclass(frozen=True)
class TokenInfo(_Section):
    """Which tokens became rows: ``selection`` (cls, all, mean, pooled, ...)."""

    NAME: ClassVar[str] = "provenance.tokens"
    TYPES: ClassVar[dict] = {"selection": (str,), "tokens_per_image": (int,)}
    ALWAYS: ClassVar[tuple] = ("selection",)
    selection: str | None = None
    tokens_per_image: int | None = None


@dataclass(frozen=True)
class DatasetInfo(_Section):
    """The image list: dataset name, root, split and the selection (``take_every``,
    ``max_images``) whose file names, in order, ``paths_sha256`` fingerprints."""

    NAME: ClassVar[str] = "provenance.dataset"
    TYPES: ClassVar[dict] = {"name": (str,), "root": (str,), "split": (str,), "num_images_in_split": (int,),
                             "num_classes": (int,), "take_every": (int,), "max_images": (int,),
                             "num_selected": (int,), "paths_sha256": (str,)}
    ALWAYS: ClassVar[tuple] = ("name", "root", "split", "num_images_in_split", "num_classes", "take_every",
                               "max_images", "num_selected", "paths_sha256")
    name: str | None = None
    root: str | None = None
    split: str | None = None
    num_images_in_split: int | None = None
    num_classes: int | None = None
    take_every: int | None = None
    max_images: int | None = None
    num_selected: int | None = None
    paths_sha256: str | None = None


@dataclass(frozen=True)
class SAEInfo(_Section):
    """The SAE a code store was encoded with (``LoadedSAE.describe()``)."""

    NAME: ClassVar[str] = "provenance.sae"
    TYPES: ClassVar[dict] = {"path": (str,), "arch": (str,), "dict_class": (str,), "activation_dim": (int,),
                             "dict_size": (int,), "k": (int,), "expansion_factor": (int, float),
                             "group_sizes": (list, tuple)}
    path: str | None = None
    arch: str | None = None
    dict_class: str | None = None
    activation_dim: int | None = None
    dict_size: int | None = None
    k: int | None = None
    expansion_factor: int | float | None = None
    group_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.group_sizes is not None:  # JSON gives a list; compare and hash as a tuple
            object.__setattr__(self, "group_sizes", tuple(int(g) for g in self.group_sizes))


@dataclass(frozen=True)
class RunInfo(_Section):
    """How the forward passes ran (batch size, autocast); not part of compatibility."""

    NAME: ClassVar[str] = "provenance.run"
    TYPES: ClassVar[dict] = {"batch_size": (int,), "autocast": (str,)}
    ALWAYS: ClassVar[tuple] = ("batch_size", "autocast")
    batch_size: int | None = None
    autocast: str | None = None


@dataclass(frozen=True)
class Difference:
    """The first way two provenances differ: ``aspect`` (model, hook, tokens, dataset), the
    field compared, and the two values."""

    aspect: str
    key: str
    ours: Any
    theirs: Any

    def __str__(self) -> str:
        return f"{self.aspect} {self.key}: {self.ours!r} vs {self.theirs!r}"


@dataclass(frozen=True)
class Provenance:
    """Where a store's rows came from (``manifest.json["provenance"]``)."""

    model: ModelInfo = field(default_factory=ModelInfo)
    hook: HookInfo = field(default_factory=HookInfo)
    tokens: TokenInfo = field(default_factory=TokenInfo)
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    run: RunInfo | None = None
    sae: SAEInfo | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _SECTIONS: ClassVar[dict[str, type[_Section]]] = {
        "model": ModelInfo, "hook": HookInfo, "tokens": TokenInfo, "dataset": DatasetInfo,
        "run": RunInfo, "sae": SAEInfo}

    @classmethod
    def from_json(cls, d: Any, where: str = "provenance") -> "Provenance":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ManifestError(f"{where} is {d!r}, expected an object")
        kwargs: dict[str, Any] = {}
        for key, section in cls._SECTIONS.items():
            if key in ("run", "sae") and not d.get(key):
                kwargs[key] = None
            else:
                kwargs[key] = section.from_json(d.get(key), f"{where}.{key}")
        return cls(**kwargs, extra={k: v for k, v in d.items() if k not in cls._SECTIONS})

    @classmethod
    def of_manifest(cls, manifest: Any) -> "Provenance":
        """The provenance inside a raw ``manifest.json`` (any store format, read leniently)."""
        return cls.from_json(manifest.get("provenance") if isinstance(manifest, dict) else None)

    @classmethod
    def of_sae_config(cls, config: Any) -> "Provenance | None":
        """The provenance saevlm's ``train`` records in an SAE's ``config.json`` (``saevlm.provenance``);
        None for SAEs trained elsewhere (e.g. the authors' released checkpoints)."""
        ours = config.get("saevlm") if isinstance(config, dict) else None
        recorded = ours.get("provenance") if isinstance(ours, dict) else None
        return cls.from_json(recorded, "config.json saevlm.provenance") if recorded else None

    def to_json(self) -> dict:
        out = {key: getattr(self, key).to_json() for key in ("model", "hook", "tokens", "dataset")}
        for key in ("run", "sae"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_json()
        return {**out, **self.extra}

    def with_sae(self, sae: SAEInfo | Mapping[str, Any]) -> "Provenance":
        """The provenance of codes made from these activations by ``sae``."""
        return dataclasses.replace(self, sae=sae if isinstance(sae, SAEInfo) else SAEInfo.from_json(dict(sae)))

    def _aspect(self, aspect: str) -> dict[str, Any]:
        """The values that must agree for ``aspect`` (what makes two stores interchangeable)."""
        if aspect == "model":
            return {"source": self.model.source}  # see _model_identity for what is compared
        if aspect == "hook":
            return {"attachment_point": self.hook.attachment_point, "layer": self.hook.layer}
        if aspect == "tokens":
            return {"selection": self.tokens.selection}
        if aspect == "dataset":
            return {"paths_sha256": self.dataset.paths_sha256, "split": self.dataset.split}
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {ASPECTS}")

    def _model_difference(self, other: "Provenance") -> Difference | None:
        """Models are the same when their weights are: ``weights_sha256`` (a hash of every weight,
        recorded since the stores of format 2) when both record it, else the ``block0_sample``
        both record (up to bf16 rounding), else the source they were loaded from. A copy of a
        model folder is the same model; other weights saved under the same path are not."""
        a, b = self.model.extra, other.model.extra
        if a.get("weights_sha256") and b.get("weights_sha256"):
            if a["weights_sha256"] != b["weights_sha256"]:
                return Difference("model", "weights_sha256", f"{self.model.label} ({a['weights_sha256'][:12]}...)",
                                  f"{other.model.label} ({b['weights_sha256'][:12]}...)")
            return None
        if isinstance(a.get("block0_sample"), list) and isinstance(b.get("block0_sample"), list):
            if not same_block(a["block0_sample"], b["block0_sample"]):
                return Difference("model", "block0_sample", f"{self.model.label} (its block-0 weights)",
                                  f"{other.model.label} (other block-0 weights)")
            return None
        if self.model.source != other.model.source:
            return Difference("model", "source", self.model.source, other.model.source)
        return None

    def compatible_with(self, other: "Provenance", aspects: Sequence[str] = ASPECTS) -> Difference | None:
        """None when ``other`` agrees with this provenance on every aspect asked for, else the
        first :class:`Difference`. Aspects: ``model`` (the source the weights were loaded from),
        ``hook`` (attachment point and layer), ``tokens`` (selection) and ``dataset`` (the image
        list: split and ``paths_sha256``). Every stage that pairs or chains stores asks this."""
        for aspect in aspects:
            if aspect == "model":
                diff = self._model_difference(other)
                if diff is not None:
                    return diff
                continue
            ours, theirs = self._aspect(aspect), other._aspect(aspect)
            for key in ours:
                if ours[key] != theirs[key]:
                    return Difference(aspect, key, ours[key], theirs[key])
        return None


@dataclass(frozen=True)
class ShardEntry:
    """One shard of a store: its files, row and image counts, checksums and value checks.

    ``file`` is an activation store's payload; a code store's are ``indptr`` / ``indices`` /
    ``values`` with ``nnz`` stored values."""

    index: int
    num_rows: int
    first_image: int
    num_images: int
    rows_file: str
    file: str | None = None
    indptr: str | None = None
    indices: str | None = None
    values: str | None = None
    nnz: int | None = None
    images_file: str | None = None
    checksums: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    nonfinite: int = 0
    first_nonfinite_row: int | None = None
    skipped_images: tuple = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    INT_KEYS: ClassVar[tuple[str, ...]] = ("index", "num_rows", "first_image", "num_images")

    @classmethod
    def from_json(cls, s: Any, where: str, payload_keys: Sequence[str]) -> "ShardEntry":
        cls._check_required(s, where, payload_keys)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: s[k] for k in known if k in s}
        for key in ("nonfinite", "nnz", "first_nonfinite_row"):
            _check(kwargs.get(key), (int,), f"{where}.{key}")
        kwargs["nonfinite"] = int(kwargs.get("nonfinite") or 0)
        kwargs["skipped_images"] = tuple(kwargs.get("skipped_images") or ())
        if not isinstance(kwargs.get("checksums", {}), dict):
            raise ManifestError(f"{where}.checksums is not an object")
        return cls(**kwargs, extra={k: v for k, v in s.items() if k not in known})

    @classmethod
    def _check_required(cls, s: Any, where: str, payload_keys: Sequence[str]) -> None:
        """Every shard names its rows and payload files and holds non-negative integer counts."""
        if not isinstance(s, dict):
            raise ManifestError(f"{where} is not an object")
        missing = [key for key in (*cls.INT_KEYS, "rows_file", *payload_keys) if key not in s]
        if missing:
            raise ManifestError(f"{where} has no {missing[0]!r}")
        for key in cls.INT_KEYS:
            if not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 0:
                raise ManifestError(f"{where}.{key} is {s[key]!r}, expected a non-negative integer")

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (value is None and f.name not in self.INT_KEYS):
                continue
            if f.name in ("nonfinite", "checksums") and not value:
                continue  # written only for shards that hold some / by writers that record them
            out[f.name] = list(value) if isinstance(value, tuple) else (dict(value) if isinstance(value, Mapping) else value)
        return {**out, **self.extra}

    @property
    def has_checksums(self) -> bool:
        return bool(self.checksums)

    def files(self) -> list[str]:
        """Every file this shard lists (payload, rows, images)."""
        return [v for v in (self.file, self.indptr, self.indices, self.values, self.rows_file, self.images_file)
                if v]


def _check_format(m: dict, path: Path, field: str, fmt: str) -> None:
    """A store of another kind, or of a schema this version cannot read, is refused before its keys."""
    if m.get("format") != fmt:
        raise UserError(f"{field} {path}: format is {m.get('format')!r}, expected {fmt!r}", field=field)
    if m.get("schema_version") not in READABLE_SCHEMAS:
        raise UserError(f"{field} {path}: schema_version {m.get('schema_version')!r}, this saevlm reads "
                        f"{' and '.join(map(str, READABLE_SCHEMAS))}", field=field)


@dataclass(frozen=True)
class Manifest:
    """A store's ``manifest.json``: format, shape, dtype, shards, pairing hashes, provenance."""

    format: str
    schema_version: int
    complete: bool
    dim: int
    dtype: str
    num_rows: int
    shards: tuple[ShardEntry, ...]
    provenance: Provenance
    kind: str | None = None
    storage_dtype: str | None = None
    images_per_shard: int | None = None
    num_images: int | None = None
    image_ids_sha256: str | None = None
    content_sha256: str | None = None
    skipped_images: tuple = ()
    files: Mapping[str, str] = field(default_factory=dict)
    file_checksums: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    software: Mapping[str, Any] = field(default_factory=dict)
    created: str | None = None
    finished: str | None = None
    nnz: int | None = None
    write_id: str | None = None  # random, new each time the store is (re-)written: tells versions apart
    extra: Mapping[str, Any] = field(default_factory=dict)

    _REQUIRED: ClassVar[tuple] = (("complete", (bool,)), ("dim", (int,)), ("num_rows", (int,)),
                                  ("shards", (list,)), ("dtype", (str,)), ("provenance", (dict,)))

    _OPTIONAL: ClassVar[tuple] = (("kind", (str,)), ("images_per_shard", (int,)), ("num_images", (int,)),
                                  ("image_ids_sha256", (str,)), ("content_sha256", (str,)), ("nnz", (int,)),
                                  ("write_id", (str,)), ("files", (dict,)), ("file_checksums", (dict,)),
                                  ("skipped_images", (list,)))

    @classmethod
    def _check_header(cls, m: dict, storage_dtypes: Mapping[str, str] | None) -> None:
        """The required keys and their types, the stored dtype and a positive width."""
        for key, types in cls._REQUIRED:
            if key not in m:
                raise ManifestError(f"no {key!r} key")
            if not isinstance(m[key], types) or (types == (int,) and isinstance(m[key], bool)):
                raise ManifestError(f"{key!r} is {m[key]!r}, expected {types[0].__name__}")
        if storage_dtypes is not None:
            if m["dtype"] not in storage_dtypes:
                raise ManifestError(f"dtype {m['dtype']!r} is not a store dtype ({', '.join(storage_dtypes)})")
            want = storage_dtypes[m["dtype"]]
            if m.get("storage_dtype", want) != want:
                raise ManifestError(f"dtype {m['dtype']!r} is stored as {want}, but storage_dtype says "
                                    f"{m.get('storage_dtype')!r}")
        if m["dim"] < 1:
            raise ManifestError(f"dim {m['dim']} (expected a positive width)")

    def __post_init__(self) -> None:
        # JSON's null and lists read as the empty mapping and a tuple, so equal manifests compare equal
        object.__setattr__(self, "skipped_images", tuple(self.skipped_images or ()))
        for key in ("files", "file_checksums", "software"):
            object.__setattr__(self, key, getattr(self, key) or {})

    @property
    def dict_size(self) -> int:
        """A code store's dictionary size (its ``dim``)."""
        return self.dim

    @classmethod
    def from_json(cls, m: dict, path: Path, field: str, fmt: str, payload_keys: Sequence[str] = ("file",),
                  storage_dtypes: Mapping[str, str] | None = None) -> "Manifest":
        """Parse and check a manifest; a UserError naming ``path`` and the key otherwise.

        ``storage_dtypes``: store dtype -> the numpy dtype its values are stored as."""
        def bad(what: str) -> UserError:
            return UserError(f"{field} {path}: {what}; the manifest is damaged or was edited by hand "
                             f"(re-create the store with --overwrite)", field=field)

        _check_format(m, path, field, fmt)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            cls._check_header(m, storage_dtypes)
            shards = tuple(ShardEntry.from_json(s, f"shards[{j}]", payload_keys) for j, s in enumerate(m["shards"]))
            provenance = Provenance.from_json(m["provenance"])
            kwargs = {k: m[k] for k in known if k in m}
            for key, types in cls._OPTIONAL:
                _check(kwargs.get(key), types, key)
        except ManifestError as e:
            raise bad(str(e)) from None
        kwargs.update(shards=shards, provenance=provenance)
        return cls(**kwargs, extra={k: v for k, v in m.items() if k not in known})

    def to_json(self) -> dict:
        """The manifest as written to ``manifest.json`` (keys this code does not know included)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if f.name == "shards":
                value = [sh.to_json() for sh in value]
            elif f.name == "provenance":
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return {**out, **self.extra}

    def identity(self) -> dict:
        """What a resumed writer must agree on (kind, shape, dtype, sharding, provenance)."""
        return {"kind": self.kind, "dim": self.dim, "dtype": self.dtype,
                "images_per_shard": self.images_per_shard, "provenance": self.provenance}

    def nonfinite_shards(self) -> list[int]:
        return [i for i, s in enumerate(self.shards) if s.nonfinite]
