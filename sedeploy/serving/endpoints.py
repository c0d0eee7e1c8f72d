"""The two Triton models ``sedeploy serve`` binds for each artifact, and how their errors are answered.

* ``<name>``: the artifact's own tensors, dynamically batched; Triton checks names, shapes and types.
* ``<name>_images``: encoded images (bytes) in, the top-k ``labels``, ``scores`` and class ``indices`` out,
  with the artifact's own preprocessing done on the server. It is not batched, so an undecodable image fails
  only the request that sent it.

The inference callables run in sedeploy's process (PyTriton forwards Triton's requests to them). A request the
image endpoint refuses (not an image, too large, too many images, ``top_k`` below 1) raises
:class:`RequestRefused`; every model's stub-side ``model.py`` is sedeploy's
(:mod:`sedeploy.serving.stub_model`, around PyTriton's proxy), which answers a refusal as Triton's
``INVALID_ARG`` (HTTP 400) with its one line and any other failure as a one-line internal error (HTTP 500)
naming the model: no traceback and no server path leaves the server. The details of an unexpected failure
go to the server's log (PyTriton's warning); a refusal is one ``info`` line there.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedeploy.backends.base import Runner, classify_logits
from sedeploy.errors import BadInputError, SedeployError
from sedeploy.serving import stub_model
from sedeploy.serving.repository import TensorConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES_PER_REQUEST = 64
"""Image endpoint cap when the artifact names no max batch: one request cannot make the server decode without end."""
IMAGE_MODEL_SUFFIX = "_images"
"""The image endpoint of model ``NAME`` is ``NAME_images``."""
IMAGE_INPUT = "image"
TOP_K_INPUT = "top_k"
IMAGE_OUTPUTS = ("labels", "scores", "indices")
PYTRITON_INFERENCE_LOGGER = "pytriton.proxy.inference"
"""The logger PyTriton writes a failed request's traceback to (as a warning), in this process."""
_TRITON_TO_NUMPY: dict[str, type[np.generic]] = {
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_INT8": np.int8,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
}


class ServeError(SedeployError):
    """The server cannot start or serve: a busy port, an artifact that does not load, Triton failing."""


class RequestRefused(BadInputError):
    """A client's request the server refuses; the client gets HTTP 400 with :attr:`message`, one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return stub_model.REQUEST_REFUSED + self.message


@dataclass(frozen=True)
class ServedModel:
    """One artifact as served: its Triton model names, tensors and batching, and the runner's description."""

    name: str
    image_name: str
    artifact: Path
    input: TensorConfig
    output: TensorConfig
    max_batch: int
    max_queue_delay_us: int
    instances: int
    runner: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_name": self.image_name,
            "artifact": str(self.artifact),
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "max_batch": self.max_batch,
            "max_queue_delay_us": self.max_queue_delay_us,
            "instances": self.instances,
            "runner": self.runner,
        }


def numpy_dtype(tensor: TensorConfig) -> type[np.generic]:
    """The numpy type of a Triton tensor; a :class:`BadInputError` for the types serve does not handle."""
    try:
        return _TRITON_TO_NUMPY[tensor.data_type]
    except KeyError:
        raise BadInputError(
            f"tensor {tensor.name!r} has Triton type {tensor.data_type}, which sedeploy serve does not handle"
        ) from None


def _tensor_infer(runner: Runner, model: ServedModel) -> Callable[..., dict[str, np.ndarray]]:
    """The batched callable of the tensor endpoint: Triton's batch in, the runner's logits out."""
    from pytriton.decorators import batch

    input_name, output_name = model.input.name, model.output.name
    output_dtype = numpy_dtype(model.output)

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {output_name: np.asarray(runner(inputs[input_name]), dtype=output_dtype)}

    return infer


def _decode(data: bytes, index: int, channels: int) -> Any:
    """One encoded image through the shared loader (pixel limit, EXIF rotation, odd modes), as a PIL image.

    :class:`RequestRefused` naming the image if it is not one or is over the pixel limit. The decoder's own
    words (which name in-memory objects) stay in the server's log.
    """
    from sedeploy.data import BadImageError, ImageTooLargeError, load_image

    try:
        return load_image(io.BytesIO(data), channels)
    except BadImageError as error:
        logger.debug("image %d of a request: %s", index, error.reason)
        if isinstance(error, ImageTooLargeError):
            reason, fix = error.reason, "send a smaller image"
        else:
            reason, fix = error.reason.split(" (", 1)[0], "send the file's bytes (PNG, JPEG, ...)"
        raise RequestRefused(f"image {index} ({len(data)} bytes): {reason}; {fix}") from None


def _image_infer(
    runner: Runner, labels: Sequence[str] | None, top_k: int, model_name: str
) -> Callable[[list[Any]], list[Any]]:
    """The image endpoint's callable: per request, decode, preprocess with the artifact's own settings, classify.

    A request may hold up to the model's max batch of images, so one request cannot make the server decode
    an unbounded number of them.
    """
    channels = runner.metadata.in_chans if runner.metadata is not None else 3
    max_images = runner.input_spec.max_batch or DEFAULT_MAX_IMAGES_PER_REQUEST

    def answer(request: Any) -> dict[str, np.ndarray]:
        encoded = np.asarray(request[IMAGE_INPUT]).reshape(-1)
        if encoded.size == 0:
            raise RequestRefused("the request holds no image; send at least one")
        k = top_k
        if TOP_K_INPUT in request.data:
            k = int(np.asarray(request[TOP_K_INPUT]).reshape(-1)[0])
            if k < 1:
                raise RequestRefused(f"top_k must be at least 1, got {k}")
        if encoded.size > max_images:
            raise RequestRefused(
                f"the request holds {encoded.size} images; send at most {max_images} per request"
            )
        images = [_decode(bytes(item), index, channels) for index, item in enumerate(encoded)]
        classes = classify_logits(runner(runner.preprocess(images)), k, labels)
        return {
            "labels": np.array([[label.encode() for label in c.labels] for c in classes], dtype=np.bytes_),
            "scores": np.array([c.probabilities for c in classes], dtype=np.float32),
            "indices": np.array([c.indices for c in classes], dtype=np.int32),
        }

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        try:
            return [answer(request) for request in requests]
        except RequestRefused as refused:
            logger.info("%s refused a request: %s", model_name, refused.message)
            raise

    return infer


def bind(triton: Any, runner: Runner, model: ServedModel, labels: Sequence[str] | None, top_k: int) -> None:
    """Bind the tensor endpoint (dynamically batched) and the image endpoint (one request per execution),
    each behind sedeploy's stub-side ``model.py``."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    triton.bind(
        model_name=model.name,
        infer_func=[_tensor_infer(runner, model) for _ in range(model.instances)],
        inputs=[Tensor(name=model.input.name, dtype=numpy_dtype(model.input), shape=model.input.dims)],
        outputs=[Tensor(name=model.output.name, dtype=numpy_dtype(model.output), shape=model.output.dims)],
        config=ModelConfig(
            max_batch_size=model.max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=model.max_queue_delay_us),
        ),
        strict=True,
    )
    triton.bind(
        model_name=model.image_name,
        infer_func=[_image_infer(runner, labels, top_k, model.image_name) for _ in range(model.instances)],
        inputs=[
            Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(-1,)),
            Tensor(name=TOP_K_INPUT, dtype=np.int32, shape=(1,), optional=True),
        ],
        outputs=[
            Tensor(name="labels", dtype=np.bytes_, shape=(-1, -1)),
            Tensor(name="scores", dtype=np.float32, shape=(-1, -1)),
            Tensor(name="indices", dtype=np.int32, shape=(-1, -1)),
        ],
        config=ModelConfig(batching=False),
        strict=True,
    )
    for name in (model.name, model.image_name):
        _answer_in_one_line(triton, name)


def _answer_in_one_line(triton: Any, name: str) -> None:
    """Deploy model ``name`` with :mod:`sedeploy.serving.stub_model` as its ``model.py``, PyTriton's beside it.

    PyTriton 0.7 sends each model's stub-side files through Triton's repository API, from its model object's
    ``get_proxy_model_files`` (``{"file:<version>/model.py": bytes, ...}``). Anything else found here refuses
    to serve: an error would otherwise reach clients as tracebacks with the server's paths.
    """
    try:
        bound = next(model for model in triton._model_manager.models if model.model_name == name)
        files = dict(bound.get_proxy_model_files())
        proxy = next(key for key in files if key.startswith("file:") and key.endswith("/model.py"))
    except (AttributeError, StopIteration, TypeError, OSError):
        raise ServeError(
            "this nvidia-pytriton deploys its models in a way sedeploy serve does not know; install "
            "nvidia-pytriton 0.7"
        ) from None
    files[proxy.removesuffix("model.py") + f"{stub_model.PROXY_MODULE}.py"] = files[proxy]
    files[proxy] = Path(stub_model.__file__).read_bytes()
    bound.get_proxy_model_files = lambda: dict(files)


class QuietRefusals(logging.Filter):
    """Drops PyTriton's traceback warning for a request sedeploy refused (the endpoint logged its one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return stub_model.REQUEST_REFUSED not in record.getMessage()
