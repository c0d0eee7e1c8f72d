"""OpenVINO backend: an IR (``.xml`` + ``.bin``) built from the exported ONNX, and :class:`OpenVinoRunner`.

Laid out as the TensorRT backend is: :mod:`.compat` (the modules with telemetry off, the version, what a
device can run), :mod:`.builder` (:func:`build_ir`, NNCF's INT8 quantization, :func:`ir_manifest`) and
:mod:`.runner` (:class:`OpenVinoRunner`, :func:`check_ir`).

Float type and hint: the float parts of an IR (all of an FP16 IR, the unquantized layers of an INT8 one) run
in the ``INFERENCE_PRECISION_HINT`` that *measures* fastest here, not the first one OpenVINO lists: on an AMX
Xeon f16 is listed and runs 7x slower than bf16. The LATENCY/THROUGHPUT hint is measured likewise at the
requested batch. Measuring is the measuring wing's job (:mod:`sedeploy.measure.runtime_choice`); the build
records its choice in the manifest's ``engine`` (through :func:`ir_manifest`) and the runner uses and shows
it. Either can be pinned (``float_type``, ``hint``).
"""

from sedeploy.backends.openvino.builder import FLOAT_MIN_TOP1, build_ir, ir_manifest
from sedeploy.backends.openvino.compat import (
    ARTIFACT_FORMAT,
    EXTRA,
    FLOAT_TYPES,
    HINTS,
    can_run,
    capabilities,
    check_pins,
    float_type_candidates,
    nncf,
    openvino,
    require_available,
    require_bf16,
    require_runnable,
    version,
)
from sedeploy.backends.openvino.runner import OpenVinoRunner, check_ir

__all__ = [
    "ARTIFACT_FORMAT",
    "EXTRA",
    "FLOAT_MIN_TOP1",
    "FLOAT_TYPES",
    "HINTS",
    "OpenVinoRunner",
    "build_ir",
    "can_run",
    "capabilities",
    "check_ir",
    "check_pins",
    "float_type_candidates",
    "ir_manifest",
    "nncf",
    "openvino",
    "require_available",
    "require_bf16",
    "require_runnable",
    "version",
]
