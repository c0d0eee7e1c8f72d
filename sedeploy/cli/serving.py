"""The serving commands: ``triton`` (write or check a model repository), ``serve`` and ``loadtest``.

Each command imports its library module when it runs; defaults are read from their library homes
(:class:`~sedeploy.cli.options.Later`) when the command is parsed or its help shown.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from sedeploy.cli.options import (
    DEVICE,
    INSTANCES,
    JSON_OUTPUT,
    MAX_BATCH_SERVED,
    Later,
    LaterChoice,
    batch_option,
    check_json_out,
    emit,
    option,
    parse_batch_sizes,
)

_SERVER = "sedeploy.serving.server"
_QUEUE_DELAY = Later("sedeploy.serving.triton", "DEFAULT_QUEUE_DELAY_US")


@click.command("triton")
@click.argument("artifacts", nargs=-1, type=click.Path())
@option("-o", "--output", type=click.Path(file_okay=False), help="Model repository folder to write.")
@option("--name", help="Model name (default: the model's architecture).")
@option("--version", "first_version", type=click.IntRange(min=1), default=1, show_default=True)
@option("--per-precision", is_flag=True, help="One model per artifact, named NAME_<precision>.")
@MAX_BATCH_SERVED
@option("--preferred-batch", help="Preferred batch sizes of the dynamic batcher, e.g. 4,8.")
@option("--max-queue-delay-us", type=click.IntRange(min=0), default=_QUEUE_DELAY, show_default=True)
@INSTANCES
@option(
    "--kind",
    type=LaterChoice(Later("sedeploy.serving.triton", "KINDS")),
    help="Instance kind (default: gpu; cpu for INT8 cpu ONNX).",
)
@option("--ort-trt-accelerator", is_flag=True, help="ONNX on GPU: ONNX Runtime hands it to TensorRT.")
@option("--force", is_flag=True, help="Replace a different model of the same name.")
@option("--check", "check_path", type=click.Path(file_okay=False), help="Validate a repository instead.")
@JSON_OUTPUT
def triton_command(
    artifacts: tuple[str, ...],
    output: str | None,
    name: str | None,
    first_version: int,
    per_precision: bool,
    max_batch: int | None,
    preferred_batch: str | None,
    max_queue_delay_us: int,
    instances: int,
    kind: str | None,
    ort_trt_accelerator: bool,
    force: bool,
    check_path: str | None,
    json_out: str | None,
) -> None:
    """Write a Triton Inference Server model repository for ARTIFACTS (ONNX or TensorRT engines), or --check one."""
    ctx = click.get_current_context()
    if check_path is not None:
        if artifacts or output:
            raise click.UsageError("--check REPO takes no artifacts and no -o")
        from sedeploy.serving.triton import check_repository

        report = check_repository(check_path)
        emit(report, json_out)
        ctx.exit(0 if report.ok else 1)
    if not artifacts or not output:
        raise click.UsageError("give one or more artifacts and -o MODEL_REPOSITORY (or --check REPO)")
    from sedeploy.serving.triton import ServingOptions, write_repository

    options = ServingOptions(
        max_batch=max_batch,
        preferred_batch=parse_batch_sizes(preferred_batch),
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        kind=kind,
        ort_trt_accelerator=ort_trt_accelerator,
    )
    result = write_repository(
        artifacts,
        output,
        name=name,
        version=first_version,
        per_precision=per_precision,
        options=options,
        force=force,
    )
    emit(result, json_out)


@click.command("serve")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@option("--name", help="Triton model name (default: the architecture; several artifacts add _<precision>).")
@option(
    "--host",
    type=str,
    default=Later(_SERVER, "DEFAULT_HOST"),
    show_default=True,
    help="Address to listen on.",
)
@option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=Later(_SERVER, "DEFAULT_HTTP_PORT"),
    show_default=True,
)
@option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    default=Later(_SERVER, "DEFAULT_GRPC_PORT"),
    show_default=True,
)
@option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=Later(_SERVER, "DEFAULT_METRICS_PORT"),
    show_default=True,
)
@MAX_BATCH_SERVED
@option(
    "--max-queue-delay-us",
    type=click.IntRange(min=0),
    default=_QUEUE_DELAY,
    show_default=True,
    help="How long the dynamic batcher may hold a request to fill a batch.",
)
@INSTANCES
@option(
    "--top-k",
    type=click.IntRange(min=1),
    default=Later(_SERVER, "DEFAULT_TOP_K"),
    show_default=True,
    help="Image endpoint default.",
)
@DEVICE
@JSON_OUTPUT
def serve_command(
    artifacts: tuple[str, ...],
    name: str | None,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    max_batch: int | None,
    max_queue_delay_us: int,
    instances: int,
    top_k: int,
    device: str | None,
    json_out: str | None,
) -> None:
    """Serve ARTIFACT... behind Triton (HTTP, gRPC, metrics) until SIGINT or SIGTERM."""
    from sedeploy.serving.server import serve, serve_forever

    server = serve(
        artifacts,
        name=name,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        max_batch=max_batch,
        max_queue_delay_us=max_queue_delay_us,
        instances=instances,
        top_k=top_k,
        device=device,
    )

    def _ready(running: Any) -> None:
        emit(running, json_out)
        sys.stdout.flush()

    reason = serve_forever(server, on_ready=_ready)
    click.echo(f"stopped ({reason})", err=True)


_LOADTEST = "sedeploy.serving.loadtest"


@click.command("loadtest")
@click.argument("url")
@option("--model", required=True, help="Triton model name (the tensor endpoint).")
@option("--concurrency", default="1,4,16", show_default=True, help="Concurrent clients per level.")
@option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=Later(_LOADTEST, "DEFAULT_DURATION_S"),
    show_default=True,
    help="Seconds per level.",
)
@option(
    "--max-requests",
    type=click.IntRange(min=1),
    default=Later(_LOADTEST, "DEFAULT_MAX_REQUESTS"),
    show_default=True,
    help="Requests per level at most.",
)
@batch_option("Batch size of each request.", default=1, show_default=True)
@option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=Later(_LOADTEST, "DEFAULT_TOLERANCE"),
    show_default=True,
    help="Largest difference from a request's answer alone that still counts as equal (GPU backends: 1e-3).",
)
@option("--metrics-url", help="Triton's metrics endpoint, used when the statistics API is restricted.")
@option("--access-token", envvar="TRITON_ACCESS_TOKEN", help="Token for a restricted statistics API.")
@option("--allow-remote", is_flag=True, help="Allow a server that is not on a loopback address.")
@JSON_OUTPUT
@click.pass_context
def loadtest_command(
    ctx: click.Context,
    url: str,
    model: str,
    concurrency: str,
    duration: float,
    max_requests: int,
    batch: int,
    tolerance: float,
    metrics_url: str | None,
    access_token: str | None,
    allow_remote: bool,
    json_out: str | None,
) -> None:
    """Load-test MODEL at URL (http://127.0.0.1:8000 or grpc://...): throughput, latency, server batches."""
    check_json_out(json_out)
    from sedeploy.serving.loadtest import loadtest, parse_concurrency

    report = loadtest(
        url,
        model,
        concurrency=parse_concurrency(concurrency),
        duration_s=duration,
        max_requests=max_requests,
        batch=batch,
        tolerance=tolerance,
        access_token=access_token,
        metrics_url=metrics_url,
        allow_remote=allow_remote,
    )
    emit(report, json_out)
    if report.errors or report.mismatches:
        ctx.exit(1)
