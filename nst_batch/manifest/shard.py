"""Sharding a manifest over processes: ``--shard I/N``, Kubernetes Indexed Jobs, Slurm arrays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nst_batch.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's part of the manifest: rows k with k mod count == index."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count}: need 0 <= index < count (count >= 1)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def takes(self, k: int) -> bool:
        return k % self.count == self.index


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> Shard(I, N)."""
    index, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return Shard(int(index), int(count))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None


def shard_from_env(shard: str | None, shards: int | None, env: Mapping[str, str]) -> Shard | None:
    """This process's shard: ``--shard I/N``; or ``--shards N`` with the index from a Kubernetes
    Indexed Job (``JOB_COMPLETION_INDEX``) or a Slurm array; or a Slurm array by itself."""
    if shard is not None:
        found = parse_shard(shard)
        if shards is not None and shards != found.count:
            raise ConfigError(f"--shard {shard} and --shards {shards} disagree")
        return found
    slurm = _slurm_index(env)
    if shards is not None:
        if shards < 1:
            raise ConfigError(f"--shards must be at least 1, not {shards}")
        if (value := env.get("JOB_COMPLETION_INDEX")) is not None:
            index = _env_int("JOB_COMPLETION_INDEX", value)
        elif slurm is not None:
            index = slurm
        else:
            raise ConfigError(
                "--shards N takes the shard index from JOB_COMPLETION_INDEX (Kubernetes Indexed "
                "Job) or SLURM_ARRAY_TASK_ID; neither is set (use --shard I/N)"
            )
        return Shard(index, shards)
    if slurm is not None and env.get("SLURM_ARRAY_TASK_COUNT"):
        return Shard(slurm, _env_int("SLURM_ARRAY_TASK_COUNT", env["SLURM_ARRAY_TASK_COUNT"]))
    return None


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number") from None


def _slurm_index(env: Mapping[str, str]) -> int | None:
    """The 0-based position in a Slurm array (--array=1-8 or 0-14:2 count from their start)."""
    if "SLURM_ARRAY_TASK_ID" not in env:
        return None
    task = _env_int("SLURM_ARRAY_TASK_ID", env["SLURM_ARRAY_TASK_ID"])
    first = _env_int("SLURM_ARRAY_TASK_MIN", env.get("SLURM_ARRAY_TASK_MIN", "0"))
    step = _env_int("SLURM_ARRAY_TASK_STEP", env.get("SLURM_ARRAY_TASK_STEP", "1")) or 1
    return (task - first) // step
