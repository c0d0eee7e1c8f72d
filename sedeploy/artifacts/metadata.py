"""What an exported model is, carried inside the ONNX file as ``metadata_props``.

Every later stage (precision conversion, calibration, engine build, predict)
reads this instead of asking the user again. Each field is one ``sedeploy.*``
key with a string value (JSON where the value is structured), so tools such as
Netron show it as is:

==============================  ==============================================
key                             value
==============================  ==============================================
``sedeploy.metadata_version``   format version of these keys, ``"1"``
``sedeploy.version``            sedeploy version that wrote the file
``sedeploy.arch``               zoo name, or ``package.module:factory``
``sedeploy.options``            JSON object: model options used to build it
``sedeploy.input_name``         ``input``
``sedeploy.output_name``        ``logits``
``sedeploy.input_layout``       ``NCHW``
``sedeploy.input_size``         JSON ``[C, H, W]`` of one image
``sedeploy.channel_order``      ``RGB``, ``GRAY`` or ``unknown``
``sedeploy.num_classes``        integer
``sedeploy.preprocessing``      JSON: resize, crop, crop_pct, mean, std, interpolation
``sedeploy.labels``             JSON list of class names (only when given)
``sedeploy.params``             parameter count (complexity estimator)
``sedeploy.macs``               multiply-accumulates per image at ``input_size``
``sedeploy.weights_sha256``     SHA-256 of the source weights file (absent: random init)
``sedeploy.weights_layout``     checkpoint layout the weights were converted from
``sedeploy.opset``              ONNX opset of the default domain
``sedeploy.max_batch``          largest batch later stages should plan for
==============================  ==============================================
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import onnx

from sedeploy.artifacts.external_data import ExternalRecord, check_records, external_records
from sedeploy.errors import BadInputError
from sedeploy.files import MAX_ONNX_BYTES, read_regular_bytes, read_regular_text

PREFIX = "sedeploy."
METADATA_VERSION = 1
MAX_SIDE = 16384
"""Largest image side (input size, resize, crop) metadata may name; anything above is refused as absurd."""


def _size_problem(key: str, sizes: Sequence[int], count: tuple[int, ...]) -> str | None:
    if len(sizes) not in count:
        return f"{key} has {len(sizes)} value(s), expected {' or '.join(map(str, count))}"
    if any(not 1 <= size <= MAX_SIDE for size in sizes):
        return f"{key} {list(sizes)} must hold sizes from 1 to {MAX_SIDE}"
    return None


class EvalConfig(Protocol):
    """What :meth:`Preprocessing.from_defaults` reads of a model's config (``models.ModelDefaults`` has it).

    A protocol, so the artifact contract does not import the zoo.
    """

    @property
    def input_size(self) -> tuple[int, int, int]: ...
    @property
    def crop_pct(self) -> float: ...
    @property
    def mean(self) -> tuple[float, ...]: ...
    @property
    def std(self) -> tuple[float, ...]: ...
    @property
    def interpolation(self) -> str: ...


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an image into the model's input.

    ``resize`` follows ``torchvision.transforms.Resize``: one value resizes the
    short side to it, two values resize to exactly (H, W). Then a center crop to
    ``crop`` (H, W); pixels are scaled to [0, 1] and normalised per channel with
    ``mean`` and ``std``.
    """

    resize: tuple[int, ...]
    crop: tuple[int, int]
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @classmethod
    def from_defaults(cls, defaults: EvalConfig) -> Preprocessing:
        """Derive the preprocessing from a model's eval config (``models.ModelDefaults``; timm's eval transform)."""
        _, height, width = defaults.input_size
        if height == width:
            resize: tuple[int, ...] = (math.floor(height / defaults.crop_pct),)
        else:
            resize = (math.floor(height / defaults.crop_pct), math.floor(width / defaults.crop_pct))
        return cls(
            resize=resize,
            crop=(height, width),
            crop_pct=defaults.crop_pct,
            mean=tuple(defaults.mean),
            std=tuple(defaults.std),
            interpolation=defaults.interpolation,
        )

    def problem(self, channels: int) -> str | None:
        """Why this preprocessing cannot be applied to a ``channels``-channel image (naming the key), or None."""
        key = PREFIX + "preprocessing"
        problem = _size_problem(f"{key} resize", self.resize, (1, 2)) or _size_problem(
            f"{key} crop", self.crop, (2,)
        )
        if problem is not None:
            return problem
        if not (math.isfinite(self.crop_pct) and 0 < self.crop_pct <= 1):
            return f"{key} crop_pct {self.crop_pct} must be in (0, 1]"
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                return f"{key} {name} has {len(values)} values for {channels} channel(s)"
            if not all(math.isfinite(value) for value in values):
                return f"{key} {name} {list(values)} holds NaN or infinity"
        if any(value <= 0 for value in self.std):
            return f"{key} std {list(self.std)} must be positive (every pixel is divided by it)"
        return None


@dataclass(frozen=True)
class ModelMetadata:
    """Everything sedeploy records about an exported model; see the module docstring for the keys."""

    arch: str
    options: Mapping[str, Any]
    input_size: tuple[int, int, int]
    num_classes: int
    preprocessing: Preprocessing
    params: int
    macs: int
    opset: int
    max_batch: int
    sedeploy_version: str
    channel_order: str = "RGB"
    input_name: str = "input"
    output_name: str = "logits"
    input_layout: str = "NCHW"
    labels: tuple[str, ...] | None = None
    weights_sha256: str | None = None
    weights_layout: str | None = None

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def grayscale(self) -> bool:
        return self.channel_order == "GRAY"

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def input_mismatch(self, name: str, shape: Sequence[int | str | None]) -> str | None:
        """How a graph input (``name``, ``shape`` with symbolic or unknown dims) differs from this record, or None.

        A file whose graph and metadata disagree was edited after export; every
        later stage would feed it the wrong tensor, so it is refused up front.
        """
        expected = "N," + ",".join(str(dim) for dim in self.input_size)
        if name != self.input_name:
            return f"its input is named {name!r} but its sedeploy metadata says {self.input_name!r}"
        if len(shape) != 1 + len(self.input_size):
            return f"its input {name!r} has rank {len(shape)} but its sedeploy metadata says ({expected})"
        for got, want in zip(shape[1:], self.input_size, strict=True):
            if isinstance(got, int) and got != want:
                shown = ",".join(str(dim) if isinstance(dim, int) else "?" for dim in shape)
                return f"its input {name!r} has shape ({shown}) but its sedeploy metadata says ({expected})"
        return None

    def problem(self) -> str | None:
        """Why no later stage could use this record (naming the ``sedeploy.*`` key), or None.

        Checked on every read (:meth:`from_props`): a NaN mean or a zero std would
        otherwise turn every prediction into NaN without an error.
        """
        problem = _size_problem(PREFIX + "input_size", self.input_size, (3,))
        if problem is not None:
            return problem
        if self.num_classes < 1:
            return f"{PREFIX}num_classes {self.num_classes} must be at least 1"
        if self.labels is not None and len(self.labels) != self.num_classes:
            return (
                f"{PREFIX}labels holds {len(self.labels)} names but {PREFIX}num_classes is {self.num_classes}"
            )
        if self.max_batch < 1:
            return f"{PREFIX}max_batch {self.max_batch} must be at least 1"
        if self.params < 0 or self.macs < 0:
            return f"{PREFIX}params and {PREFIX}macs must not be negative"
        return self.preprocessing.problem(self.in_chans)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples become lists), with ``gmacs`` added."""
        data = dataclasses.asdict(self)
        data["options"] = dict(self.options)
        data["gmacs"] = self.gmacs
        return json.loads(json.dumps(data))

    def to_props(self) -> dict[str, str]:
        """The ``sedeploy.*`` key/value strings written into the ONNX file."""
        values: dict[str, Any] = {
            "metadata_version": METADATA_VERSION,
            "version": self.sedeploy_version,
            "arch": self.arch,
            "options": dict(self.options),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_layout": self.input_layout,
            "input_size": list(self.input_size),
            "channel_order": self.channel_order,
            "num_classes": self.num_classes,
            "preprocessing": dataclasses.asdict(self.preprocessing),
            "labels": list(self.labels) if self.labels is not None else None,
            "params": self.params,
            "macs": self.macs,
            "weights_sha256": self.weights_sha256,
            "weights_layout": self.weights_layout,
            "opset": self.opset,
            "max_batch": self.max_batch,
        }
        return {
            PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in values.items()
            if value is not None
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "the manifest") -> ModelMetadata:
        """Parse the :meth:`to_dict` form (a build manifest's ``source_metadata``), validated as the ONNX keys are."""
        fields = {field.name for field in dataclasses.fields(cls)}
        values: dict[str, Any] = {key: value for key, value in data.items() if key in fields}
        values["metadata_version"] = METADATA_VERSION
        values["version"] = values.pop("sedeploy_version", "")
        props = {
            PREFIX + key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in values.items()
            if value is not None
        }
        return cls.from_props(props, source)

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "the model") -> ModelMetadata:
        """Parse the ``sedeploy.*`` strings written by :meth:`to_props`."""
        values = {key[len(PREFIX) :]: value for key, value in props.items() if key.startswith(PREFIX)}
        if not values:
            raise BadInputError(f"{source} has no sedeploy metadata; export it with `sedeploy export`")
        try:
            version = int(values["metadata_version"])
            if version > METADATA_VERSION:
                raise BadInputError(
                    f"{source} has sedeploy metadata version {version}, newer than this sedeploy reads "
                    f"({METADATA_VERSION}); upgrade sedeploy"
                )
            preprocessing = json.loads(values["preprocessing"])
            labels = json.loads(values["labels"]) if "labels" in values else None
            channels, height, width = (int(v) for v in json.loads(values["input_size"]))
            crop_height, crop_width = (int(v) for v in preprocessing["crop"])
            options = json.loads(values["options"])
            if not isinstance(options, dict) or not isinstance(labels, list | None):
                raise TypeError("options must be a JSON object and labels a JSON list")
            metadata = cls(
                arch=values["arch"],
                options=options,
                input_size=(channels, height, width),
                num_classes=int(values["num_classes"]),
                preprocessing=Preprocessing(
                    resize=tuple(int(v) for v in preprocessing["resize"]),
                    crop=(crop_height, crop_width),
                    crop_pct=float(preprocessing["crop_pct"]),
                    mean=tuple(float(v) for v in preprocessing["mean"]),
                    std=tuple(float(v) for v in preprocessing["std"]),
                    interpolation=str(preprocessing["interpolation"]),
                ),
                params=int(values["params"]),
                macs=int(values["macs"]),
                opset=int(values["opset"]),
                max_batch=int(values["max_batch"]),
                sedeploy_version=values["version"],
                channel_order=values["channel_order"],
                input_name=values["input_name"],
                output_name=values["output_name"],
                input_layout=values["input_layout"],
                labels=tuple(str(label) for label in labels) if labels is not None else None,
                weights_sha256=values.get("weights_sha256"),
                weights_layout=values.get("weights_layout"),
            )
        except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as error:
            raise BadInputError(
                f"{source} has incomplete or corrupt sedeploy metadata ({type(error).__name__}: {error}); "
                "export it again"
            ) from None
        problem = metadata.problem()
        if problem is not None:
            raise BadInputError(f"{source} has unusable sedeploy metadata: {problem}; export it again")
        return metadata


def channel_order_for(in_chans: int) -> str:
    """``GRAY`` for one channel, ``RGB`` for three (the zoo's ImageNet mean/std are RGB), else ``unknown``."""
    return {1: "GRAY", 3: "RGB"}.get(in_chans, "unknown")


def write_metadata(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Replace the ``sedeploy.*`` entries of ``model.metadata_props`` with ``metadata``; other entries stay."""
    kept = [(entry.key, entry.value) for entry in model.metadata_props if not entry.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *sorted(metadata.to_props().items())]:
        model.metadata_props.add(key=key, value=value)


def _parse_onnx(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise BadInputError(
            f"ONNX file {path} does not exist; check the path or export one with `sedeploy export`"
        )
    if path.is_dir():
        raise BadInputError(f"{path} is a folder; give the .onnx file inside it")
    try:
        data = read_regular_bytes(path, "ONNX file", MAX_ONNX_BYTES)  # never a pipe or device, never > 2 GiB
    except OSError as error:
        raise BadInputError(
            f"cannot read ONNX file {path} ({error.strerror or error}); check its permissions"
        ) from None
    try:
        proto = onnx.load_model_from_string(data)  # external data stays where it is, checked by the caller
    except Exception as error:
        raise BadInputError(
            f"{path} is not a readable ONNX file ({type(error).__name__}); export one with `sedeploy export`"
        ) from None
    if not proto.graph.node:
        raise BadInputError(
            f"{path} is not a readable ONNX file (no graph); export one with `sedeploy export`"
        )
    return proto


_RECORDS_KEPT = 64
_records: dict[tuple[int, int, int, int], tuple[ExternalRecord, ...]] = {}
_records_lock = threading.Lock()


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """The file's device, inode, size and mtime (ns): a rewrite or replacement changes it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _remember(path: Path, proto: onnx.ModelProto) -> tuple[ExternalRecord, ...]:
    records = external_records(proto)
    identity = _identity(path)
    if identity is not None:
        with _records_lock:
            _records[identity] = records
            while len(_records) > _RECORDS_KEPT:
                del _records[next(iter(_records))]
    return records


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX file (without external data), or fail with one line saying what is wrong with it.

    The one ONNX reader: its external data is checked here (relative, inside the
    model's folder, in bounds: :mod:`sedeploy.artifacts.external_data`), so every
    stage that reads a model through it refuses a hostile one before any backend
    opens the file.
    """
    path = Path(path)
    proto = _parse_onnx(path)
    check_records(_remember(path, proto), path)
    return proto


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """:func:`load_onnx`'s checks for a path about to be handed to a backend (ONNX Runtime, OpenVINO, TensorRT).

    What the model says about its external data is parsed once per unchanged file
    (same inode, size and mtime) and kept; the files it names are checked again on
    every call.
    """
    path = Path(path)
    identity = _identity(path)
    with _records_lock:
        records = _records.get(identity) if identity is not None else None
    if records is None:
        records = _remember(path, _parse_onnx(path))
    check_records(records, path)


def read_metadata(model: str | os.PathLike[str] | onnx.ModelProto) -> ModelMetadata:
    """The :class:`ModelMetadata` of an ONNX file or loaded model written by ``sedeploy export``."""
    if isinstance(model, onnx.ModelProto):
        proto, source = model, "the model"
    else:
        proto, source = load_onnx(model), str(model)
    return ModelMetadata.from_props({entry.key: entry.value for entry in proto.metadata_props}, source)


def metadata_or_none(proto: onnx.ModelProto) -> ModelMetadata | None:
    """The model's sedeploy metadata, or None for an ONNX file that has none (a newer or broken one still fails)."""
    if not any(entry.key.startswith(PREFIX) for entry in proto.metadata_props):
        return None
    return read_metadata(proto)


def read_labels(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Class names from a file: a JSON list, or one name per line (blank lines ignored)."""
    path = Path(path)
    try:
        text = read_regular_text(path, "labels file")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"cannot read labels file {path} ({error}); give a UTF-8 text file") from None
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except ValueError as error:
            raise BadInputError(f"labels file {path} is not valid JSON ({error})") from None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise BadInputError(f"labels file {path} must be a JSON list of strings")
        return tuple(labels)
    return tuple(line.strip() for line in text.splitlines() if line.strip())
