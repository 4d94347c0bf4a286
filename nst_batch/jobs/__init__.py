"""Jobs: a stylization job as a value, its inputs, its sidecar record, and the runners.

- :mod:`nst_batch.jobs.sidecar`: the typed sidecar, the parameter hash, is-a-job-done;
- :mod:`nst_batch.jobs.inputs`: :class:`~nst_batch.jobs.inputs.Job` and reading its images;
- :mod:`nst_batch.jobs.run`: running one job, a batch, and :func:`~nst_batch.jobs.run.run_batched`
  (the batch runner with the solo fallback that ``run`` and ``watch`` share);
- :mod:`nst_batch.jobs.video`: clip jobs (a video content: ``stylize_video``, always alone).
"""
