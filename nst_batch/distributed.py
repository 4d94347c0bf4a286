"""Manifest jobs over a pool of Ray actors (``nst-batch run MANIFEST --ray [ADDRESS]``).

Each actor holds its own :class:`~nst_batch.pool.ModelPool`, so the weights load once per actor,
and runs jobs through the same :func:`nst_batch.manifest.execute` as a local run: a failing job
comes back as a "failed" outcome, never as an exception that would stop the run. An actor that
dies (its process killed, say) fails only the job it held and is replaced. Paths in the manifest
must mean the same files on every node (a shared file system). Needs the ``ray`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nst_batch.config import batch_key
from nst_batch.errors import ConfigError
from nst_batch.manifest import JobEvents, JobOutcome, ManifestConfig, PlannedJob, execute
from nst_batch.pool import ModelPool


class _Worker:
    """One actor: a model pool kept between jobs."""

    def __init__(self, check_onnx: Path | None) -> None:
        self.models = ModelPool(check_onnx)

    def run(self, planned: PlannedJob) -> JobOutcome:
        return execute(planned, self.models)


def wants_gpu(jobs: Sequence[PlannedJob], resources: Mapping[str, float]) -> bool:
    """Actors get a GPU each when a job asks for CUDA, or for "auto" on a cluster with GPUs."""
    devices = {p.job.config.model.device for p in jobs}
    return any(d.startswith("cuda") for d in devices) or (
        "auto" in devices and resources.get("GPU", 0) > 0
    )


def run_on_ray(jobs: Sequence[PlannedJob], config: ManifestConfig, events: JobEvents) -> None:
    """Run ``jobs`` on Ray actors, one job per actor at a time; outcomes go to ``events``."""
    try:
        import ray
        from ray.exceptions import RayActorError, RayError
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'nst-batch[ray]'") from None
    if not jobs:
        return
    if not ray.is_initialized():
        ray.init(address=config.ray_address or None)
    resources = ray.cluster_resources()
    gpu = wants_gpu(jobs, resources)
    slots = int(resources.get("GPU" if gpu else "CPU", 1))
    options: dict[str, Any] = {"num_gpus": 1} if gpu else {"num_cpus": 1}
    worker = ray.remote(_Worker).options(**options)
    actors = [worker.remote(config.check_onnx) for _ in range(max(1, min(len(jobs), slots)))]
    idle = list(actors)
    # Same-shaped jobs next to each other, so an actor reuses the model it loaded last.
    queue = sorted(jobs, key=lambda p: repr(batch_key(p.job.config)))
    pending: dict[Any, tuple[Any, PlannedJob]] = {}
    try:
        while queue or pending:
            while idle and queue:
                actor, planned = idle.pop(), queue.pop(0)
                events.start(planned)
                pending[actor.run.remote(planned)] = (actor, planned)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, planned = pending.pop(ref)
            try:
                outcome = ray.get(ref)
                idle.append(actor)
            except RayActorError as err:  # the actor's process died: replace it
                outcome = planned.outcome("failed", f"Ray actor died: {err}")
                actor = worker.remote(config.check_onnx)
                actors.append(actor)
                idle.append(actor)
            except RayError as err:
                outcome = planned.outcome("failed", f"{type(err).__name__}: {err}")
                idle.append(actor)
            events.end(outcome)
    finally:
        for actor in actors:  # on Ctrl-C too: running jobs stop, having written nothing
            ray.kill(actor)
