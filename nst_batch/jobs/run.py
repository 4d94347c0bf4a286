"""Running jobs: one, a batch of them as one optimization, and :func:`run_batched`, the batch
runner with a solo fallback that ``nst-batch run`` and ``nst-batch watch`` share.

Each job writes its image (and extras) and then its sidecar, each atomically, so a finished job is
one whose sidecar exists. The failure policy lives here once: which errors are the job's fault
(:class:`~nst_batch.errors.NstError`: bad input or settings) and which are the machine's (CUDA out
of memory, I/O: worth a retry), when a failed batch is rerun job by job, and when the CUDA cache
is given back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import Tensor

from nst_batch.config import OutputConfig, StylizeConfig, batch_key
from nst_batch.engine.model import resolve_device
from nst_batch.engine.optimize import CUDA_SYNC_EVERY, OptimizeResult, Progress
from nst_batch.engine.weights import Weights
from nst_batch.errors import NstError
from nst_batch.extras import loss_plot, snapshot_writer, write_sheet
from nst_batch.images import oriented_size, resized_shape, save_image, to_tensor, write_atomic
from nst_batch.jobs.inputs import Job, JobInputs, make_job, read_inputs
from nst_batch.jobs.sidecar import Sidecar, make_sidecar, sidecar_path
from nst_batch.jobs.video import clip_log_fields, run_clip
from nst_batch.pool import ModelPool
from nst_batch.transfer import stylize_batch_tensors
from nst_batch.video.run import VideoResult


@dataclass
class StylizeResult:
    image: Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    optimization: OptimizeResult
    sidecar: Sidecar  # what the sidecar file holds

    @property
    def interrupted(self) -> bool:
        return self.optimization.interrupted

    @property
    def metadata(self) -> dict[str, Any]:
        """The sidecar as JSON (what the file holds)."""
        return self.sidecar.to_json()


def stylize(
    content_path: Path,
    style_paths: Path | Sequence[Path],
    output_path: Path,
    config: StylizeConfig,
    progress: Callable[[Progress], None] | None = None,
    outputs: OutputConfig | None = None,
    models: ModelPool | None = None,
    keep_interrupted: bool = True,
    cancel_check: Callable[[], None] | None = None,
) -> StylizeResult:
    """Stylize one content file with one or more style files; write the image and its sidecar.

    Inputs are checked and decoded before the model loads, so bad input fails in a second, not
    after a long run. Interrupted (Ctrl-C) runs still write the best image so far, flagged in the
    sidecar, and return with ``result.interrupted``; with ``keep_interrupted=False`` (batch runs)
    nothing is written and KeyboardInterrupt propagates. An exception raised by ``progress``
    aborts the run and propagates, writing nothing; so does one raised by ``cancel_check``,
    which runs before every step (how a daemon cancels a job).
    """
    job = read_inputs(make_job(content_path, style_paths, output_path, config, outputs))
    return stylize_batch([job], progress, models, keep_interrupted, cancel_check)[0]


def stylize_batch(
    jobs: Sequence[JobInputs],
    progress: Callable[[Progress], None] | None = None,
    models: ModelPool | None = None,
    keep_interrupted: bool = True,
    cancel_check: Callable[[], None] | None = None,
) -> list[StylizeResult]:
    """Run jobs (from :func:`~nst_batch.jobs.inputs.read_inputs`) with one
    :func:`~nst_batch.config.batch_key` and same-shaped content as one batch; write each job's
    image and sidecar. ``progress`` sees the whole batch (``Progress.jobs``: each job's losses)."""
    wall_start = time.perf_counter()
    config = _sync_for_snapshots(jobs, jobs[0].job.config)
    device = resolve_device(config.model.device)
    models = models or ModelPool()
    model, weights = models.get(config.model, config.loss.layers, device)
    targets = models.target_features(config.model, config.loss.layers, device)
    configs = [dataclasses.replace(j.job.config, optim=config.optim) for j in jobs]
    result = stylize_batch_tensors(
        [to_tensor(j.content_small) for j in jobs],
        [[to_tensor(img) for img in j.style_imgs] for j in jobs],
        configs,
        model,
        _progress_fanout(jobs, progress),
        target_model=targets,
        cancel_check=cancel_check,
    )
    if result.interrupted and not keep_interrupted:
        raise KeyboardInterrupt  # batch runs redo the job later rather than keep a partial result
    wall = time.perf_counter() - wall_start
    images = result.image.cpu()
    return [
        _write_result(job, images[i : i + 1], _job_result(result, i), weights, device, wall)
        for i, job in enumerate(jobs)
    ]


def _progress_fanout(
    jobs: Sequence[JobInputs], progress: Callable[[Progress], None] | None
) -> Callable[[Progress], None]:
    """The loop's callback: the caller's progress (whole batch), and each job's snapshots."""
    writers = [snapshot_writer(j.job.output, j.job.outputs.save_every) for j in jobs]

    def report(p: Progress) -> None:
        if progress is not None:
            progress(p)
        for i, write in enumerate(writers):
            if write is not None:
                write(p.job(i) if len(writers) > 1 else p)

    return report


def _sync_for_snapshots(jobs: Sequence[JobInputs], config: StylizeConfig) -> StylizeConfig:
    """Snapshots need the image on the host at their steps: read back at least that often."""
    every = [j.job.outputs.save_every for j in jobs if j.job.outputs.save_every]
    if not every or config.optim.sync_every is not None:
        return config
    sync = math.gcd(CUDA_SYNC_EVERY, *every)
    return dataclasses.replace(config, optim=dataclasses.replace(config.optim, sync_every=sync))


def _write_result(
    inputs: JobInputs,
    image: Tensor,
    result: OptimizeResult,
    weights: Weights,
    device: torch.device,
    wall_seconds: float,
) -> StylizeResult:
    """Write one job's image, extras and sidecar (last: a sidecar marks a finished job)."""
    job, config = inputs.job, inputs.job.config
    save_image(image, job.output)
    files: dict[str, str] = {}
    if job.outputs.sheet:
        files["sheet"] = str(
            write_sheet(job.output, inputs.content_small, inputs.style_imgs, image, config)
        )
        plot = loss_plot(job.output, result.history)
        files["loss_plot"] = str(plot) if plot else "skipped: matplotlib is not installed"
    used = inputs.content_small.size
    sidecar = make_sidecar(
        config=config,
        weights=weights,
        device=device,
        inputs={
            "content": [(job.content, inputs.content_img.size, used)],
            "styles": [
                (p, img.size, resized_shape(img.size, config.style_edge(max(used))))
                for p, img in zip(job.styles, inputs.style_imgs, strict=True)
            ],
        },
        output_path=job.output,
        result=result,
        wall_seconds=wall_seconds,
        files=files,
        parameter_hash=job.parameter_hash(),
    )
    text = json.dumps(sidecar.to_json(), indent=2)
    write_atomic(sidecar_path(job.output), text.encode() + b"\n")
    return StylizeResult(image=image, optimization=result, sidecar=sidecar)


def _job_result(result: OptimizeResult, index: int) -> OptimizeResult:
    """One job's view of a batch's optimization."""
    if result.image.shape[0] == 1:
        return result
    return dataclasses.replace(
        result,
        image=result.image[index : index + 1],
        loss=result.losses[index],
        losses=(result.losses[index],),
        terms=result.terms[index : index + 1],
        start_losses=result.start_losses[index : index + 1],
        failures=result.failures[index : index + 1],
        history=[p.job(index) for p in result.history],
    )


def run_job(
    job: Job,
    models: ModelPool,
    progress: Callable[[Progress], None] | None = None,
    cancel_check: Callable[[], None] | None = None,
) -> StylizeResult | VideoResult:
    """Run one job with a shared model pool. Ctrl-C writes nothing and propagates
    KeyboardInterrupt: the job stays to be redone; so does an exception raised by
    ``cancel_check`` (called before every optimizer step). A clip job (``job.video``) keeps
    its finished frames for the rerun."""
    if job.video is not None:
        return run_clip(job, models, progress, cancel_check)
    return run_batch([job], models, progress, cancel_check)[0]


def run_batch(
    jobs: Sequence[Job],
    models: ModelPool,
    progress: Callable[[Progress], None] | None = None,
    cancel_check: Callable[[], None] | None = None,
) -> list[StylizeResult]:
    """Run jobs that can share a batch (:func:`batch_groups`) as one; each job's output and
    sidecar are written as :func:`run_job` writes them, and its result is the one it gets alone.
    ``progress`` sees the whole batch (``Progress.jobs`` has each job's losses)."""
    inputs = [read_inputs(job) for job in jobs]
    return stylize_batch(inputs, progress, models, False, cancel_check)


def batch_groups(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Split jobs into batches of at most ``batch_size`` that can run as one: same
    :func:`~nst_batch.config.batch_key` and content of the same shape at the output size.
    Batches come in the order of their first job (batch size 1 keeps the order). Jobs whose input
    cannot be read go alone (their error then surfaces when they run), and so do clips."""
    groups: dict[tuple[Any, ...], list[list[Job]]] = {}
    for index, job in enumerate(jobs):
        if job.video is not None:
            groups[("alone", index)] = [[job]]
            continue
        try:
            shape = resized_shape(oriented_size(job.content), job.config.size)
            key: tuple[Any, ...] = (batch_key(job.config), shape)
        except (OSError, ValueError, Image.DecompressionBombError):
            key = ("alone", index)
        batches = groups.setdefault(key, [[]])
        if len(batches[-1]) >= batch_size:
            batches.append([])
        batches[-1].append(job)
    position = {id(job): i for i, job in enumerate(jobs)}
    batches = [batch for found in groups.values() for batch in found]
    return sorted(batches, key=lambda batch: position[id(batch[0])])


# --- the batch runner and its failure policy -------------------------------------------------


class Cancelled(Exception):
    """Raised by a ``cancel_check``: the job stops, writes nothing, and is not at fault."""


Ending = Literal["done", "failed", "cancelled", "not started"]


@dataclass(frozen=True)
class JobEnd:
    """How one job of :func:`run_batched` ended."""

    job: Job
    status: Ending
    result: StylizeResult | VideoResult | None = None  # when done (VideoResult: a clip job)
    reason: str = ""  # why it failed, was cancelled or not started
    job_fault: bool = True  # False: the machine's fault (out of memory, I/O): worth a retry
    seconds: float = 0.0
    trace: str | None = None  # a traceback, for failures that are not the job's fault


@dataclass(frozen=True)
class BatchHooks:
    """What :func:`run_batched` tells its caller; every hook is optional."""

    start: Callable[[Sequence[Job]], None] | None = None  # jobs about to run (as one batch)
    step: Callable[[Job, Progress], None] | None = None  # one job's progress
    end: Callable[[JobEnd], None] | None = None
    batch_failed: Callable[[Sequence[Job], str], None] | None = None  # before the solo reruns
    cancel_check: Callable[[], None] | None = None  # raises Cancelled; before every step
    may_start: Callable[[], bool] | None = None  # False: the remaining jobs are not started


def run_batched(
    jobs: Sequence[Job], models: ModelPool, batch_size: int, hooks: BatchHooks = BatchHooks()
) -> list[JobEnd]:
    """Run jobs, those that can share a batch (:func:`batch_groups`) together; a batch that
    fails is rerun job by job, so one bad job fails alone. A failure never stops the run: it is
    the job's :class:`JobEnd`. KeyboardInterrupt propagates (the running jobs wrote nothing)."""
    ends: list[JobEnd] = []
    for batch in batch_groups(jobs, batch_size):
        if len(batch) > 1:
            together = _run_together(batch, models, hooks)
            if together is not None:
                ends += together
                continue
        ends += [_run_alone(job, models, hooks) for job in batch]
    return ends


def _run_together(
    batch: Sequence[Job], models: ModelPool, hooks: BatchHooks
) -> list[JobEnd] | None:
    """A batch's ends, or None when it failed and its jobs are to be rerun alone."""
    if hooks.may_start is not None and not hooks.may_start():
        return [_report(hooks, JobEnd(job, "not started", reason="shutting down")) for job in batch]
    if hooks.start is not None:
        hooks.start(batch)
    step = hooks.step

    def progress(p: Progress) -> None:
        if step is not None:
            for i, job in enumerate(batch):
                step(job, p.job(i))

    start = time.perf_counter()
    try:
        results = run_batch(batch, models, progress, hooks.cancel_check)
    except Cancelled as err:
        return [_report(hooks, _cancelled(job, err)) for job in batch]
    except Exception as err:  # find the culprit: each job alone
        _give_back_cuda_memory()
        if hooks.batch_failed is not None:
            hooks.batch_failed(batch, _reason(err))
        return None
    seconds = time.perf_counter() - start
    return [
        _report(hooks, JobEnd(job, "done", result, seconds=seconds))
        for job, result in zip(batch, results, strict=True)
    ]


def _run_alone(job: Job, models: ModelPool, hooks: BatchHooks) -> JobEnd:
    if hooks.may_start is not None and not hooks.may_start():
        return _report(hooks, JobEnd(job, "not started", reason="shutting down"))
    if hooks.start is not None:
        hooks.start([job])
    step = hooks.step
    progress = None if step is None else lambda p: step(job, p)
    start = time.perf_counter()
    try:
        result = run_job(job, models, progress, hooks.cancel_check)
    except Cancelled as err:
        end = _cancelled(job, err)
    except Exception as err:  # a crashing job must not stop the others
        _give_back_cuda_memory()
        fault = isinstance(err, NstError)
        trace = None if fault else traceback.format_exc(limit=8)
        end = JobEnd(job, "failed", None, _reason(err), fault, time.perf_counter() - start, trace)
    else:
        end = JobEnd(job, "done", result, seconds=time.perf_counter() - start)
    return _report(hooks, end)


def done_fields(result: StylizeResult | VideoResult) -> dict[str, Any]:
    """What a log line says of a finished job: its convergence (an image; a warning when it did
    not converge, and a CUDA graph fallback) or its frames (a clip)."""
    if isinstance(result, VideoResult):
        return clip_log_fields(result)
    sidecar = result.sidecar
    fields: dict[str, Any] = {"converged": sidecar.converged}
    if not sidecar.converged:
        fields["warning"] = sidecar.convergence
    if sidecar.cuda_graphs.startswith("fallback"):
        fields["cuda_graphs"] = sidecar.cuda_graphs
    return fields


def _cancelled(job: Job, err: Cancelled) -> JobEnd:
    return JobEnd(job, "cancelled", reason=str(err) or "cancelled", job_fault=False)


def _report(hooks: BatchHooks, end: JobEnd) -> JobEnd:
    if hooks.end is not None:
        hooks.end(end)
    return end


def _reason(err: Exception) -> str:
    """An error as a report or log says it: library errors by their message alone."""
    return str(err) if isinstance(err, NstError) else f"{type(err).__name__}: {err}"


def _give_back_cuda_memory() -> None:
    """After a failure (often CUDA out of memory), free the cached blocks for the next job."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
