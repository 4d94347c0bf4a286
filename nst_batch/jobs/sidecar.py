"""The sidecar: the JSON record written beside every output, as a typed value.

A job is finished when its sidecar exists (it is written last, atomically) and records the
job's :func:`parameter_hash`. Readers use :class:`Sidecar`'s attributes; the JSON layout is the
one documented in the README (``to_json`` / ``from_json`` keep it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from nst_batch.config import StylizeConfig
from nst_batch.engine.graphs import resolve_precision
from nst_batch.engine.memory import MemoryPlan
from nst_batch.engine.optimize import OptimizeResult, Progress
from nst_batch.engine.weights import Weights, sha256_file
from nst_batch.version import __version__

HISTORY_POINTS = 200  # loss-history samples kept in the sidecar


def sidecar_path(output: Path) -> Path:
    return output.with_suffix(".json")


@dataclass(frozen=True)
class FinalLoss:
    """The loss terms of the saved image (all from the same iterate); None before any step."""

    total: float | None = None
    content: float | None = None
    style: float | None = None
    tv: float | None = None


@dataclass(frozen=True)
class Level:
    """One pyramid level as run: its long edge, the steps it ran and their speed."""

    long_edge: int
    steps: int
    seconds_per_iteration: float | None


@dataclass(frozen=True)
class Sidecar:
    nst_batch_version: str
    created: str  # ISO 8601, UTC
    # {"content": [...], "styles": [...]}: each {"path", "original_size": [W, H], "size": [W, H]}
    inputs: dict[str, list[dict[str, Any]]]
    output: dict[str, Any]  # {"path", "size": [W, H]}
    parameters: dict[str, Any]  # dataclasses.asdict(StylizeConfig)
    pyramid: list[Level]  # coarse to fine
    weights: dict[str, Any]  # source, sha256, preprocessing
    device: str
    precision: str
    torch_version: str
    wall_seconds: float
    optimize_seconds: float
    seconds_per_iteration: float | None
    steps_completed: int
    stop_reason: str
    interrupted: bool
    final_loss: FinalLoss
    loss_history: list[dict[str, Any]]  # sampled: step, loss, content, style, tv
    # False: the saved image is not better than the start (why: nst_batch.engine.lbfgs)
    converged: bool = True
    convergence: str = ""  # why it did not converge (only written when it did not)
    # "on", "off" (CPU, or --no-cuda-graphs) or "fallback: <reason>" (a capture or replay
    # failed on this driver and the job ran eagerly)
    cuda_graphs: str = "off"
    # How the final level fitted its memory budget: tiles, L-BFGS history or Adam, the estimate
    # and the budget (nst_batch.engine.memory); None in sidecars of versions before it
    memory: MemoryPlan | None = None
    files: dict[str, str] = field(default_factory=dict)  # extra files: sheet, loss_plot
    parameter_hash: str = ""

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        if self.converged:
            record.pop("convergence")
        # The documented key order: convergence verdict before the losses.
        order = [f.name for f in dataclasses.fields(self) if f.name in record]
        head = order[: order.index("final_loss")]
        tail = ["converged", "convergence"] if not self.converged else ["converged"]
        keys = [k for k in head if k not in tail] + tail
        keys += [k for k in order if k not in keys]
        return {k: record[k] for k in keys}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Sidecar:
        """Read a sidecar's JSON; TypeError or KeyError when it is not one (older versions'
        sidecars lack ``converged``, which then reads as True)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in names}
        values["final_loss"] = FinalLoss(**record["final_loss"])
        values["pyramid"] = [Level(**level) for level in record["pyramid"]]
        if record.get("memory") is not None:
            values["memory"] = MemoryPlan(**record["memory"])
        return cls(**values)


def read_sidecar(output: Path) -> Sidecar | None:
    """The sidecar of ``output``, or None when it is missing or not readable as one."""
    try:
        record = json.loads(sidecar_path(output).read_text())
        return Sidecar.from_json(record) if isinstance(record, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def parameter_hash(content: Path, styles: Sequence[Path], config: StylizeConfig) -> str:
    """What makes a result: the inputs' bytes and every setting except the device it ran on.

    A job whose sidecar records the same hash need not run again; a changed input file or setting
    changes the hash. The device is left out so work done on one machine counts on another.
    """
    settings = dataclasses.asdict(config)
    for name in ("device", "targets_backend", "cuda_graphs"):  # same numbers however computed
        settings["model"].pop(name)
    settings.pop("max_pixels")  # which inputs are accepted, not what is made of them
    # Tiles give the same numbers; the budget only matters when the optimizer state does not
    # fit, and what was chosen then is in the sidecar's "memory".
    settings.pop("memory")
    settings["optim"].pop("sync_every")  # when the host reads losses, not what they are
    record = {
        "content": sha256_file(Path(content)),
        "styles": [sha256_file(Path(s)) for s in styles],
        "settings": settings,
    }
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recorded_hash(output: Path) -> str | None:
    """The parameter hash of a finished output, or None if the output or its sidecar is missing
    (or the run was interrupted: its best-so-far image is not a finished job)."""
    if not output.is_file():
        return None
    sidecar = read_sidecar(output)
    if sidecar is None or sidecar.interrupted or not sidecar.parameter_hash:
        return None
    return sidecar.parameter_hash


def _levels(config: StylizeConfig, history: Sequence[Progress]) -> list[Level]:
    """Per pyramid level: long edge, steps run and seconds per iteration."""
    levels = []
    previous = 0.0
    for i, edge in enumerate(config.pyramid()):
        mine = [p for p in history if p.scale == i]
        seconds = (mine[-1].elapsed - previous) if mine else 0.0
        previous = mine[-1].elapsed if mine else previous
        speed = round(seconds / len(mine), 5) if mine else None
        levels.append(Level(edge, len(mine), speed))
    return levels


def _sampled(history: Sequence[Progress]) -> list[dict[str, Any]]:
    stride = max(1, -(-len(history) // HISTORY_POINTS))
    sampled = list(history[::stride])
    if history and sampled[-1] is not history[-1]:
        sampled.append(history[-1])
    return [
        {"step": p.step, "loss": p.loss, "content": p.content, "style": p.style, "tv": p.tv}
        for p in sampled
    ]


ImageSizes = tuple[Path, tuple[int, int], tuple[int, int]]  # path, original (W, H), used (W, H)


def make_sidecar(
    *,
    config: StylizeConfig,
    weights: Weights,
    device: torch.device,
    inputs: dict[str, list[ImageSizes]],
    output_path: Path,
    result: OptimizeResult,
    wall_seconds: float,
    files: dict[str, str],
    parameter_hash: str,
) -> Sidecar:
    """The record of one finished (or interrupted) optimization."""
    terms = result.terms[0] if result.terms else (None,) * 4
    return Sidecar(
        nst_batch_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        inputs={
            role: [
                {"path": str(path), "original_size": list(orig), "size": list(size)}
                for path, orig, size in items
            ]
            for role, items in inputs.items()
        },
        output={"path": str(output_path), "size": list(result.image.shape[-1:-3:-1])},
        parameters=dataclasses.asdict(config),
        pyramid=_levels(config, result.history),
        weights={
            "source": weights.source.name,
            "sha256": weights.sha256,
            "preprocessing": weights.source.preprocessing,
        },
        device=str(device),
        precision=resolve_precision(config.model.precision, device),
        torch_version=torch.__version__,
        wall_seconds=round(wall_seconds, 3),
        optimize_seconds=round(result.elapsed, 3),
        seconds_per_iteration=round(result.elapsed / result.steps, 5) if result.steps else None,
        steps_completed=result.steps,
        stop_reason=result.stop_reason,
        interrupted=result.interrupted,
        converged=result.converged,
        convergence="" if result.converged else "; ".join(filter(None, result.failures)),
        cuda_graphs=result.graphs,
        memory=result.memory,
        final_loss=FinalLoss(*terms),
        loss_history=_sampled(result.history),
        files=files,
        parameter_hash=parameter_hash,
    )
