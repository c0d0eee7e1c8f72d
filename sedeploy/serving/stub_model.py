"""The ``model.py`` that Triton's Python backend stub runs for every model ``sedeploy serve`` binds.

PyTriton's own stub-side proxy (deployed beside this file as ``pytriton_model.py``) forwards each request to
the inference callable in sedeploy's process, and turns any exception there into Triton's internal error
whose text is two formatted tracebacks (the callable's and the stub's, with the server's file paths). This
wrapper answers in their place, so that no traceback and no server path crosses the network:

* a request sedeploy refused (its error text holds :data:`REQUEST_REFUSED`, then one line): Triton's
  ``INVALID_ARG`` (HTTP 400, gRPC ``INVALID_ARGUMENT``) with that line;
* a request with an input of no elements: the same, before PyTriton's serializer fails on it;
* anything else: a one-line internal error (HTTP 500) naming the model; the details go to Triton's log (and
  the callable's traceback to sedeploy's, through PyTriton's logger).

sedeploy itself imports this module only for its constants; :mod:`sedeploy.serving.endpoints` sends its
source to Triton as each model's ``model.py``. It imports nothing from sedeploy: the stub's interpreter
needs only what PyTriton's proxy needs.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

REQUEST_REFUSED = "[sedeploy refused the request] "
"""Marks the one-line message of a request sedeploy refuses, inside the error text PyTriton passes on."""
PROXY_MODULE = "pytriton_model"
"""PyTriton's stub-side ``model.py`` is deployed under this name beside this file."""
_REFUSAL = re.compile(re.escape(REQUEST_REFUSED) + r"([^\r\n]*)")


def refusal(text: str) -> str | None:
    """The refused request's one-line message inside an error text, or None when the error is not a refusal."""
    found = _REFUSAL.findall(text)
    return (found[-1].strip() or None) if found else None


def _empty_input(request: Any) -> str | None:
    for tensor in request.inputs():
        if 0 in tuple(tensor.shape()):
            return f"input {tensor.name()!r} holds no elements; send at least one"
    return None


class TritonPythonModel:
    """Triton's Python backend model: PyTriton's proxy inside, every error answered in one line."""

    def __init__(self) -> None:
        self._proxy: Any = None
        self._name = "model"

    def initialize(self, args: dict[str, str]) -> None:
        self._name = args.get("model_name", self._name)
        proxy = importlib.import_module(f"{__package__}.{PROXY_MODULE}")
        self._proxy = proxy.TritonPythonModel()
        self._proxy.initialize(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        def answer(message: str, code: Any) -> Any:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))

        refused = {index: _empty_input(request) for index, request in enumerate(requests)}
        accepted = [request for index, request in enumerate(requests) if refused[index] is None]
        responses: list[Any] = []
        if accepted:
            try:
                responses = list(self._proxy.execute(accepted))
            except Exception as error:
                text = str(error)
                message = refusal(text)
                code = pb_utils.TritonError.INVALID_ARG
                if message is None:
                    pb_utils.Logger.log_error(f"model {self._name} failed: {text}")
                    message = f"model {self._name} failed on this request; the server's log has the details"
                    code = pb_utils.TritonError.INTERNAL
                responses = [answer(message, code) for _ in accepted]
        answers = iter(responses)
        return [
            answer(message, pb_utils.TritonError.INVALID_ARG) if message is not None else next(answers)
            for message in refused.values()
        ]

    def finalize(self) -> None:
        if self._proxy is not None:
            self._proxy.finalize()
