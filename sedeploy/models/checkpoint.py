"""Model weights in: safetensors and PyTorch checkpoints, in sedeploy's, timm's and the original SENet layouts.

Reading a file (:func:`read_checkpoint`) and converting its layout
(:func:`convert_layout`) are separate steps; :func:`build_model` does both and
loads the result strictly into a zoo model.

File formats
    safetensors is preferred: it holds tensors only, so loading runs no code.
    PyTorch checkpoints are opened with ``torch.load(weights_only=True)`` and
    nothing else: a pickle that needs arbitrary classes could execute code while
    loading, so it is refused (:class:`UnsafeCheckpointError`) with the command
    that converts it, never loaded unsafely as a fallback. The state dict may sit
    at the top level or under ``state_dict`` / ``model`` / ``model_state_dict``;
    ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``)
    prefixes are removed.

Layouts
    ``sedeploy``: the zoo's own names, which are timm's ``resnet.py`` names
    (``conv1``, ``bn1``, ``layer1.0.se.fc1``, ``layer1.0.downsample.0``, ``fc``).
    ``timm``: timm's ``seresnet*`` / ``seresnext*`` / ``resnet*``: the same names,
    and timm always strides in the 3x3 conv, so it implies ``stride_placement="v1.5"``.
    ``legacy``: timm's ``legacy_*``, i.e. the original SENet weights as the
    ``pretrainedmodels`` package distributes them (``layer0.conv1``, ``layer0.bn1``,
    ``layerN.i.se_module.fc1``, ``last_linear``; SENet-154's three-conv stem
    ``layer0.conv1..3`` becomes ``conv1.0/.3/.6``); implies ``stem="legacy"``
    (max-pool without padding, ``ceil_mode``; ``legacy_deep`` for the three-conv
    stem), ``stride_placement="v1"`` for SE-ResNet, ``"v1.5"`` for SE-ResNeXt and
    SENet-154 (read from whether the 3x3 conv is grouped), ``block_style="legacy"``
    for basic blocks (ReLU before SE), and SENet-154's 3x3 shortcut convs.
    In every layout, SE weights stored as Linear layers (2-D ``se.fc1.weight``, as
    in the seed notebook's SEBlock) are reshaped to the 1x1 convs the zoo uses,
    and SE layers without biases imply ``se_bias=False``.

Telling sedeploy's layout from timm's
    The key names are identical, so the names cannot decide. A checkpoint written
    by :func:`save_checkpoint` carries a record of the architecture and options
    (safetensors metadata ``sedeploy.arch`` / ``sedeploy.options``, or a
    ``sedeploy`` entry ``{"arch": ..., "options": ...}`` beside the state dict in a
    PyTorch checkpoint); that record makes it ``sedeploy`` and its options are used.
    A bare state dict with these names is treated as ``timm``, because that is
    where such files come from; a bare state dict saved from a sedeploy model
    with ``v1`` striding must be loaded with ``layout="sedeploy"`` (``--layout
    sedeploy``). Options the user passes that contradict the layout fail with a
    :class:`ConfigError` instead of being silently overridden.

Names that fix the layout
    timm's names (:mod:`sedeploy.models.timm_names`: ``seresnet50``,
    ``legacy_seresnet18``, ...) each expect one layout and take no architecture
    options: a checkpoint in the other layout, or one whose tensors do not fit,
    fails with the registered names that do fit ("these weights look like
    legacy_seresnet18"). ``senet154`` with legacy weights builds ``legacy_senet154``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from sedeploy.errors import (
    BadInputError,
    ConfigError,
    UnsafeCheckpointError,
    WeightsMismatchError,
)
from sedeploy.files import atomic_output, open_regular, proc_fd_path, sha256_of_handle, special_file_reason
from sedeploy.models.defaults import LAYOUTS

logger = logging.getLogger(__name__)

"""Values of ``layout``: ``auto`` detects the layout as described in this module's docstring."""

RECORD_KEY = "sedeploy"
"""Entry of a PyTorch checkpoint dict holding ``{"arch": ..., "options": ...}``."""
ARCH_METADATA_KEY = "sedeploy.arch"
OPTIONS_METADATA_KEY = "sedeploy.options"
"""safetensors metadata keys of a sedeploy-written checkpoint (values are strings; options are JSON)."""

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_MODULE_PREFIXES = ("module.", "_orig_mod.")
_LEGACY_RENAMES = (
    (re.compile(r"^layer0\.conv1\."), "conv1."),
    (re.compile(r"^layer0\.bn1\."), "bn1."),
    (re.compile(r"\.se_module\."), ".se."),
    (re.compile(r"^last_linear\."), "fc."),
)
_LEGACY_DEEP_STEM_RENAMES = (
    (re.compile(r"^layer0\.conv1\."), "conv1.0."),
    (re.compile(r"^layer0\.bn1\."), "conv1.1."),
    (re.compile(r"^layer0\.conv2\."), "conv1.3."),
    (re.compile(r"^layer0\.bn2\."), "conv1.4."),
    (re.compile(r"^layer0\.conv3\."), "conv1.6."),
    (re.compile(r"^layer0\.bn3\."), "bn1."),
)
_SE_FC_WEIGHT = re.compile(r"\.se\.fc[12]\.weight$")
_SHOWN_NAMES = 3


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's tensors and what they say about the model that produced them.

    ``layout`` is ``"raw"`` straight from :func:`read_checkpoint` (names only
    unwrapped and unprefixed) and the converted layout after
    :func:`convert_layout`, whose ``state_dict`` uses sedeploy's names and whose
    ``implied_options`` are the model options needed to compute what the source did.
    """

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    layout: str = "raw"
    arch: str | None = None
    recorded_options: dict[str, Any] | None = None
    implied_options: dict[str, Any] = field(default_factory=dict)


def _is_safetensors(handle: BinaryIO) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length and a JSON header.
    handle.seek(0)
    head = handle.read(9)
    # The header length is not checked here: a file that claims more than it holds is still safetensors, and
    # its reader refuses it as truncated (one line) instead of torch's loader failing on it.
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; ``source`` names the file already opened (and checked)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(source, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated: copy it again"
        ) from None
    return tensors, metadata


def _read_torch(path: Path, handle: BinaryIO) -> Any:
    handle.seek(0)
    try:
        return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported operand" in str(error):  # not a pickle torch writes: random bytes or corruption
            raise BadInputError(
                f"{path} is not a readable PyTorch checkpoint (not a torch.save file, or corrupt); "
                "it may be truncated: copy it again"
            ) from None
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        needs = f" (it needs {found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is a pickle that needs arbitrary Python objects{needs}, and "
            "unpickling those can execute code; in a trusted environment convert it to safetensors, e.g. "
            "python -c \"import torch, safetensors.torch as st; ckpt = torch.load('IN', weights_only=False); "
            "st.save_file(ckpt.get('state_dict', ckpt), 'OUT.safetensors')\", and export that file"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        reason = str(error).splitlines()[0].split(". ")[0] if str(error) else type(error).__name__
        raise BadInputError(
            f"{path} is not a readable PyTorch checkpoint ({reason}); it may be truncated: copy it again"
        ) from None


def _unwrap(loaded: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The state dict inside a loaded PyTorch checkpoint, and its sedeploy record if any."""
    if not isinstance(loaded, Mapping):
        raise BadInputError(
            f"{path} holds a {type(loaded).__name__}, not a state dict; save model.state_dict()"
        )
    record = loaded.get(RECORD_KEY) if isinstance(loaded.get(RECORD_KEY), Mapping) else None
    candidate: Any = loaded
    if not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        candidate = next((loaded[key] for key in _WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
    if not candidate or not all(isinstance(value, torch.Tensor) for value in candidate.values()):
        raise BadInputError(
            f"{path} has no state dict of tensors at its top level or under "
            f"{' / '.join(_WRAPPER_KEYS)}; save model.state_dict()"
        )
    return dict(candidate), dict(record) if record is not None else None


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stripped = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _MODULE_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        stripped[key] = value
    return stripped


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a safetensors or PyTorch checkpoint into a raw :class:`Checkpoint` (no layout conversion)."""
    path = Path(path)
    if not path.exists() and special_file_reason(path) is None:
        raise BadInputError(f"weights file {path} does not exist; check the path")
    try:  # never a pipe or a device: reading one would block or never end
        handle = open_regular(path, "weights file")
    except OSError as error:
        raise BadInputError(f"cannot read weights file {path} ({error.strerror or error})") from None
    record: dict[str, Any] | None = None
    with handle:
        if _is_safetensors(handle):
            state_dict, metadata = _read_safetensors(path, proc_fd_path(handle, path))
            if ARCH_METADATA_KEY in metadata:
                record = {
                    "arch": metadata[ARCH_METADATA_KEY],
                    "options": metadata.get(OPTIONS_METADATA_KEY, "{}"),
                }
        else:
            state_dict, record = _unwrap(_read_torch(path, handle), path)
        sha256 = sha256_of_handle(handle)
    arch, options = None, None
    if record is not None:
        arch = str(record.get("arch"))
        raw_options = record.get("options", {})
        try:
            options = json.loads(raw_options) if isinstance(raw_options, str) else dict(raw_options)
        except (ValueError, TypeError):
            raise BadInputError(
                f"{path} has an unreadable sedeploy record {raw_options!r}; re-save it"
            ) from None
    return Checkpoint(
        path=path,
        sha256=sha256,
        state_dict=_strip_prefixes(state_dict),
        arch=arch,
        recorded_options=options,
    )


def detect_layout(checkpoint: Checkpoint) -> str:
    """``sedeploy`` when the file carries sedeploy's record, ``legacy`` for SENet names, else ``timm``."""
    if checkpoint.recorded_options is not None:
        return "sedeploy"
    keys = checkpoint.state_dict
    if any(key.startswith(("layer0.", "last_linear.")) or ".se_module." in key for key in keys):
        return "legacy"
    return "timm"


def convert_layout(checkpoint: Checkpoint, layout: str = "auto") -> Checkpoint:
    """Rename a raw checkpoint's tensors to sedeploy's names and work out the options its layout implies."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = detect_layout(checkpoint)
    state_dict = dict(checkpoint.state_dict)
    implied: dict[str, Any] = {}
    if layout == "legacy":
        deep_stem = "layer0.conv2.weight" in state_dict
        state_dict = {_legacy_name(key, deep_stem): value for key, value in state_dict.items()}
        implied.update(_legacy_options(state_dict, deep_stem))
    elif layout == "timm":
        implied["stride_placement"] = "v1.5"
    state_dict = {
        key: value[:, :, None, None] if _SE_FC_WEIGHT.search(key) and value.ndim == 2 else value
        for key, value in state_dict.items()
    }
    implied.update(_shape_options(state_dict))
    if layout == "sedeploy" and checkpoint.recorded_options:
        implied.update(checkpoint.recorded_options)
    logger.info("weights %s: %s layout, implied options %s", checkpoint.path, layout, implied)
    return replace(checkpoint, state_dict=state_dict, layout=layout, implied_options=implied)


def _legacy_name(key: str, deep_stem: bool) -> str:
    if deep_stem:
        # SENet-154's layer0: conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3, relu3 -> timm's
        # conv1 = Sequential(conv, bn, relu, conv, bn, relu, conv) and bn1.
        for pattern, new in _LEGACY_DEEP_STEM_RENAMES:
            key = pattern.sub(new, key)
    for pattern, new in _LEGACY_RENAMES:
        key = pattern.sub(new, key)
    return key


def _legacy_options(state_dict: Mapping[str, torch.Tensor], deep_stem: bool) -> dict[str, Any]:
    implied: dict[str, Any] = {"stem": "legacy_deep" if deep_stem else "legacy"}
    if deep_stem and "conv1.0.weight" in state_dict:
        implied["stem_width"] = int(state_dict["conv1.0.weight"].shape[0])
    first_conv2 = state_dict.get("layer1.0.conv2.weight")
    if "layer1.0.conv3.weight" not in state_dict:
        implied["block_style"] = "legacy"  # SEResNetBlock: ReLU before SE
    elif first_conv2 is not None:
        grouped = first_conv2.shape[0] != first_conv2.shape[1]
        implied["stride_placement"] = "v1.5" if grouped else "v1"
    shortcut = state_dict.get("layer2.0.downsample.0.weight")
    if shortcut is not None and shortcut.ndim == 4 and shortcut.shape[-1] == 3:
        implied["downsample"] = "conv3x3"
    first_conv1 = state_dict.get("layer1.0.conv1.weight")
    if (
        "layer1.0.conv3.weight" in state_dict
        and first_conv1 is not None
        and first_conv2 is not None
        and first_conv2.shape[0] == 2 * first_conv1.shape[0]
    ):
        implied["reduce_first"] = 2  # SEBottleneck (SENet-154): the first 1x1 conv is half the 3x3's width
    return implied


def _shape_options(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Options readable from tensor shapes: input channels, classes, SE without biases."""
    implied: dict[str, Any] = {}
    if "conv1.weight" in state_dict:
        implied["in_chans"] = int(state_dict["conv1.weight"].shape[1])
    if "fc.weight" in state_dict:
        implied["num_classes"] = int(state_dict["fc.weight"].shape[0])
    se_weights = [key for key in state_dict if key.endswith(".se.fc1.weight")]
    if se_weights and not any(key.endswith(".se.fc1.bias") for key in state_dict):
        implied["se_bias"] = False
    return implied


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``model``, or fail listing every missing, unexpected and misshapen tensor.

    BatchNorm's ``num_batches_tracked`` counters may be absent (the original SENet
    files predate them); they do not affect inference.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{key} {list(value.shape)} vs model {list(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    problems = [
        f"{len(names)} {kind} ({', '.join(names[:_SHOWN_NAMES])}{', ...' if len(names) > _SHOWN_NAMES else ''})"
        for kind, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with other shapes", misshapen),
        )
        if names
    ]
    if problems:
        raise WeightsMismatchError(
            f"weights in {source} do not fit the model: {'; '.join(problems)}; "
            "check the architecture and its options (or --layout)"
        )
    model.load_state_dict(dict(state_dict), strict=False)


def merge_options(implied: Mapping[str, Any], requested: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The checkpoint's implied options plus the user's; a contradiction fails instead of overriding."""

    def comparable(value: Any) -> Any:
        return list(value) if isinstance(value, (tuple, list)) else value

    for key, value in requested.items():
        if key in implied and comparable(implied[key]) != comparable(value):
            raise ConfigError(
                f"{key}={value!r} contradicts {source}, which implies {key}={implied[key]!r}; "
                "drop the option, or pass --layout if the layout was misdetected"
            )
    return {**implied, **requested}


def build_model(
    arch: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    layout: str = "auto",
    img_size: int | tuple[int, int] | None = None,
    **options: Any,
) -> tuple[nn.Module, Checkpoint | None]:
    """Create zoo model ``arch`` with ``options`` and, when given, load ``weights`` (any supported layout).

    Returns the model in eval mode and the converted checkpoint (``None`` without weights).
    """
    from sedeploy.models import timm_names
    from sedeploy.models.registry import create_model

    if weights is None:
        model = create_model(arch, img_size=img_size, **options)
        return model.eval(), None
    checkpoint = convert_layout(read_checkpoint(weights), layout)
    if checkpoint.arch is not None and checkpoint.layout == "sedeploy" and checkpoint.arch != arch:
        raise WeightsMismatchError(
            f"{checkpoint.path} holds {checkpoint.arch} weights, not {arch}; export it as {checkpoint.arch}"
        )
    if checkpoint.layout == "legacy":
        arch = timm_names.LEGACY_COUNTERPARTS.get(arch, arch)
    source = f"{checkpoint.path} ({checkpoint.layout} layout)"
    expected = timm_names.expected_layout(arch)
    implied = checkpoint.implied_options
    if expected is not None:
        # A timm name is its architecture: only the shapes the file sets (classes, channels) carry over.
        if checkpoint.layout not in (expected, "sedeploy"):
            raise WeightsMismatchError(
                f"{arch} takes weights in {_LAYOUT_NAMES[expected]}, but {checkpoint.path} is in "
                f"{_LAYOUT_NAMES[checkpoint.layout]}{fit_hint(checkpoint, arch)}"
            )
        implied = {key: value for key, value in implied.items() if key in _SHAPE_OPTIONS}
    model = create_model(arch, img_size=img_size, **merge_options(implied, options, source))
    try:
        load_weights(model, checkpoint.state_dict, source)
    except WeightsMismatchError as error:
        hint = fit_hint(checkpoint, arch) if checkpoint.layout in ("timm", "legacy") else ""
        if not hint.startswith("; these"):
            raise
        raise WeightsMismatchError(f"{error}{hint}") from None
    return model.eval(), checkpoint


_SHAPE_OPTIONS = ("num_classes", "in_chans")
_LAYOUT_NAMES = {
    "timm": "timm's resnet.py layout (conv1, layerN.i.se, fc)",
    "legacy": "the original SENet release's layout (layer0.*, layerN.i.se_module, last_linear)",
    "sedeploy": "sedeploy's layout",
}


def fit_hint(checkpoint: Checkpoint, arch: str) -> str:
    """``"; these weights look like NAME; use that name"`` for the timm names a converted checkpoint fits.

    Empty where the checkpoint is sedeploy's own; a no-fit sentence where no registered timm name fits.
    """
    from sedeploy.models import timm_names

    if checkpoint.layout not in ("timm", "legacy"):
        return ""
    shapes = {
        key: checkpoint.implied_options[key] for key in _SHAPE_OPTIONS if key in checkpoint.implied_options
    }
    fitting = timm_names.fitting_models(checkpoint.state_dict, checkpoint.layout, **shapes)
    fits = [name for name in fitting if name != arch]
    if not fits:
        return f"; no registered {checkpoint.layout} model fits them exactly either"
    names = " or ".join(fits)
    return f"; these weights look like {names}; use {'that name' if len(fits) == 1 else 'one of those names'}"


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write a zoo model's weights as safetensors, with the record that marks them as sedeploy's layout.

    The file is written to a temporary name beside ``path`` and renamed once complete.
    """
    from safetensors.torch import save_file

    name = getattr(model, "model_name", None)
    if name is None:
        raise ConfigError(
            "save_checkpoint needs a model made by sedeploy.create_model (it records arch and options)"
        )
    path = Path(path)
    metadata = {
        ARCH_METADATA_KEY: name,
        OPTIONS_METADATA_KEY: json.dumps(getattr(model, "model_options", {}), sort_keys=True),
    }
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    with atomic_output(path) as temp_path:
        save_file(tensors, str(temp_path), metadata=metadata)
    return path
