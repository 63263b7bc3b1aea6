"""Shared Ray Train machinery of the training stages (``pipelines.train_tutor``, ``pipelines.distill``).

- :mod:`pipelines.training.data` — dataset root ingest: id/URI sample tables, the deterministic per-epoch sample
  order (and the tutor's unpaired garment), the CPU decode map with error rows, Ray Data datasets, worker-side
  tensor conversion;
- :mod:`pipelines.training.loop` — the phase runner: ``TorchTrainer`` driver (scaling, storage incl. S3, failure
  and checkpoint configs), the per-worker loop (DDP, AMP, LR schedule, checkpoint/resume, per-epoch evaluation,
  fault-injection hook for tests), and the ``PhaseTask`` interface a stage implements;
- :mod:`pipelines.training.schedule` — the published LR schedule (constant, then linear decay per epoch);
- :mod:`pipelines.training.common` — network widths, the VGG loss setting, paired metrics, summaries.
"""
