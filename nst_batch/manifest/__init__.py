"""Manifest batch runs: many stylization jobs from a CSV or JSON Lines file.

A manifest row names a ``content`` image, one or more ``style`` images and an ``output``; any
stylize parameter (:func:`nst_batch.params.parameter_names`) may be given per row. Settings layer as
row > ``ManifestConfig.defaults`` (the command line) > ``ManifestConfig.config_file`` > preset.
Every row is checked before any work starts, so a typo on line 900 is found in a second, not after
hours. Finished jobs (same parameter hash in the sidecar) are skipped, so an interrupted or killed
run resumes where it stopped; outputs are written atomically, so none is ever half written.

The run is shardable (row k goes to shard k mod N) for Kubernetes Indexed Jobs and Slurm arrays,
and ends with a report, ``MANIFEST.report.json`` + ``.csv``. Progress goes to :class:`RunCallbacks`.

Modules: :mod:`~nst_batch.manifest.rows` (reading), :mod:`~nst_batch.manifest.shard`,
:mod:`~nst_batch.manifest.plan` (checking every row first) and :mod:`~nst_batch.manifest.run`.
"""

from nst_batch.manifest.plan import JobOutcome, ManifestConfig, Plan, PlannedJob, plan_manifest
from nst_batch.manifest.run import JobEvents, Report, RunCallbacks, Runner, execute, run_manifest
from nst_batch.manifest.shard import Shard, parse_shard, shard_from_env

__all__ = [
    "JobEvents",
    "JobOutcome",
    "ManifestConfig",
    "Plan",
    "PlannedJob",
    "Report",
    "RunCallbacks",
    "Runner",
    "Shard",
    "execute",
    "parse_shard",
    "plan_manifest",
    "run_manifest",
    "shard_from_env",
]
