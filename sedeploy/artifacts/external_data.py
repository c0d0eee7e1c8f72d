"""ONNX external data that stays inside the model's folder: the check every reader runs first.

An ONNX tensor may keep its bytes in another file (``data_location: EXTERNAL``,
with ``location``, ``offset`` and ``length`` entries). ONNX Runtime, TensorRT's
parser, OpenVINO and a Triton server open that file relative to the model, so a
hostile model can name ``/etc/passwd``, ``../../secret`` or a link out of its
folder and have it read as weights (ONNX itself tightened its loader after
CVE-2024-27318/27319; ONNX Runtime also has a magic location that reads process
memory). :func:`check_external_data` refuses all of that before any backend sees
the file; :func:`external_data_files` lists the side files a legitimate model
needs, so ``sedeploy triton`` can copy them with it.

The rule: every location is relative, does not climb out with ``..`` (as ONNX's
own loader), names a regular file that resolves (links followed) inside the
model's folder, appears once per tensor with only the keys ONNX defines, and
its offset and length lie inside that file and hold exactly the tensor's bytes.
"""

from __future__ import annotations

import math
import os
import stat as stat_module
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from onnx import AttributeProto, TensorProto

from sedeploy.errors import BadInputError

_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})
"""The keys ONNX defines for an external tensor (``basepath`` is written by some ONNX tools and ignored)."""
_ORT_MEMORY_LOCATION = "*/_ORT_MEM_ADDR_/*"
"""ONNX Runtime reads a tensor with this location from the process memory at ``offset``."""
_FIX = "keep the data files beside the model in its own folder (onnx.save_model(..., save_as_external_data=True))"

_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
}
"""Bits per element of the fixed-size types (the 8- and 4-bit float/int types are added below where known)."""
for _name, _bits in (
    ("FLOAT8E4M3FN", 8),
    ("FLOAT8E4M3FNUZ", 8),
    ("FLOAT8E5M2", 8),
    ("FLOAT8E5M2FNUZ", 8),
    ("FLOAT8E8M0", 8),
    ("UINT4", 4),
    ("INT4", 4),
    ("FLOAT4E2M1", 4),
):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits


@dataclass(frozen=True)
class ExternalRecord:
    """What a model says about one external tensor, as written (nothing checked yet): kept without the model."""

    tensor: str
    entries: tuple[tuple[str, str], ...]
    dims: tuple[int, ...]
    data_type: int


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor whose bytes live in a side file: its name, the location as written, and the byte range."""

    tensor: str
    location: str
    offset: int
    length: int


def _attribute_tensors(attribute: AttributeProto, where: str) -> Iterator[tuple[TensorProto, str]]:
    if attribute.HasField("t"):
        yield attribute.t, where
    for tensor in attribute.tensors:
        yield tensor, where
    sparse_tensors = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
    for sparse in [*sparse_tensors, *attribute.sparse_tensors]:
        yield sparse.values, where
        yield sparse.indices, where
    subgraphs = [attribute.g] if attribute.HasField("g") else []
    for graph in [*subgraphs, *attribute.graphs]:
        yield from _graph_tensors(graph)


def _node_tensors(
    nodes: Iterator[onnx.NodeProto] | list[onnx.NodeProto],
) -> Iterator[tuple[TensorProto, str]]:
    for node in nodes:
        where = f"attribute of node {node.name or node.op_type!r}"
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute, where)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[TensorProto, str]]:
    for tensor in graph.initializer:
        yield tensor, "initializer"
    for sparse in graph.sparse_initializer:
        yield sparse.values, "sparse initializer"
        yield sparse.indices, "sparse initializer"
    yield from _node_tensors(list(graph.node))


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every tensor of the model with where it sits: initializers, sparse ones, node attributes, subgraphs, functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(list(function.node))


def _expected_bytes(record: ExternalRecord) -> int | None:
    """The tensor's size in bytes from its dims and type, or None where the type has no fixed size."""
    bits = _BITS.get(record.data_type)
    if bits is None:
        return None
    return math.ceil(math.prod(record.dims) * bits / 8)


def _inside(folder: Path, path: Path) -> bool:
    try:
        return os.path.commonpath([folder, path]) == str(folder)
    except ValueError:
        return False


def _refuse(model_path: Path, name: str, location: str, problem: str) -> BadInputError:
    return BadInputError(
        f"{model_path}: tensor {name!r} keeps its data in {location!r}, {problem}; refusing the model; {_FIX}"
    )


def _checked(
    record: ExternalRecord,
    model_path: Path,
    folder: Path,
    resolved: dict[str, tuple[Path, os.stat_result | None]],
) -> ExternalTensor:
    """One external tensor checked against the rule in the module docstring."""
    name = record.tensor
    entries: dict[str, str] = {}
    for key, value in record.entries:
        if key not in _KEYS:
            raise _refuse(model_path, name, entries.get("location", "?"), f"with unknown key {key!r}")
        if key in entries:
            raise _refuse(model_path, name, value, f"with the key {key!r} given twice")
        entries[key] = value
    location = entries.get("location", "")
    if not location:
        raise _refuse(model_path, name, location, "but names no file")
    if location == _ORT_MEMORY_LOCATION:
        raise _refuse(model_path, name, location, "which makes ONNX Runtime read process memory")
    if "\0" in location:
        raise _refuse(model_path, name, location.replace("\0", "\\0"), "a name with a NUL byte")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        raise _refuse(model_path, name, location, "an absolute path outside the model's folder")
    if os.path.normpath(location).split(os.sep)[0] == os.pardir:
        raise _refuse(model_path, name, location, "which climbs out of the model's folder")
    if location not in resolved:  # many tensors share one file: resolve and stat it once per check
        target = Path(os.path.realpath(folder / location))
        try:
            resolved[location] = target, target.stat()
        except OSError:
            resolved[location] = target, None
    target, stat = resolved[location]
    if not _inside(folder, target):
        raise _refuse(model_path, name, location, f"which resolves to {target}, outside the model's folder")
    if stat is None:
        raise _refuse(model_path, name, location, "which does not exist beside the model")
    if not stat_module.S_ISREG(stat.st_mode):
        raise _refuse(model_path, name, location, "which is not a regular file")
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else stat.st_size - offset
    except ValueError:
        raise _refuse(model_path, name, location, "with an offset or length that is not a number") from None
    if offset < 0 or length < 0 or any(dim < 0 for dim in record.dims):
        raise _refuse(model_path, name, location, "with a negative offset, length or dimension")
    if offset + length > stat.st_size:
        raise _refuse(
            model_path,
            name,
            location,
            f"bytes {offset}..{offset + length} of a {stat.st_size}-byte file (past its end)",
        )
    expected = _expected_bytes(record)
    if expected is not None and length != expected:
        raise _refuse(
            model_path, name, location, f"{length} bytes at offset {offset} for a tensor of {expected} bytes"
        )
    return ExternalTensor(name, location, offset, length)


def external_records(model: onnx.ModelProto) -> tuple[ExternalRecord, ...]:
    """Every external tensor's record as the model writes it (no file is looked at)."""
    return tuple(
        ExternalRecord(
            tensor.name or f"(unnamed {where})",
            tuple((entry.key, entry.value) for entry in tensor.external_data),
            tuple(tensor.dims),
            tensor.data_type,
        )
        for tensor, where in all_tensors(model)
        if tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL
    )


def check_records(
    records: tuple[ExternalRecord, ...], model_path: str | os.PathLike[str]
) -> tuple[ExternalTensor, ...]:
    """Check ``records`` (from :func:`external_records`) against the files beside ``model_path`` now."""
    model_path = Path(model_path)
    folder = Path(os.path.realpath(model_path.parent))
    resolved: dict[str, tuple[Path, os.stat_result | None]] = {}
    return tuple(_checked(record, model_path, folder, resolved) for record in records)


def check_external_data(
    model: onnx.ModelProto, model_path: str | os.PathLike[str]
) -> tuple[ExternalTensor, ...]:
    """Refuse ``model`` (read from ``model_path``) unless its external data follows the module's rule.

    Returns the external tensors (none for a self-contained model). A refusal is a
    :class:`BadInputError` of one line naming the tensor and the location.
    """
    return check_records(external_records(model), model_path)


def external_data_files(model: onnx.ModelProto, model_path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The side files ``model`` needs, checked, relative to its folder as the model names them (one per file).

    Copied to the same relative paths beside a copy of the model, they are where
    any reader of the copy looks.
    """
    files: dict[str, str] = {}
    for entry in check_external_data(model, model_path):
        files.setdefault(os.path.normpath(entry.location), entry.location)
    return tuple(sorted(files.values()))


def inline_external_data(path: str | os.PathLike[str], data_folder: str | os.PathLike[str]) -> bool:
    """Rewrite the ONNX at ``path`` with the external tensors it names in ``data_folder`` held inside it.

    ONNX Runtime saves an optimized graph whose unchanged weights still point at
    the source model's data file; inlined, the artifact stands on its own (and its
    manifest's hash covers its weights). Returns False, writing nothing, when
    there is nothing to inline. Those locations are checked first like any other.
    """
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    if not check_external_data(model, Path(data_folder) / path.name):
        return False
    onnx.load_external_data_for_model(model, str(data_folder))
    onnx.save_model(model, str(path))
    return True
