"""The one Ray Train skeleton of the training stages (``pipelines.stages.train_tutor``, ``pipelines.stages.distill``).

A stage is a :class:`~pipelines.training.stage.TrainingStage` (its samples, its phases, its model file); what the
two stages share lives here, each module one part:

- :mod:`pipelines.training.stage` — ``run_training``: validate, lock, samples, phases in order, model file, summary;
- :mod:`pipelines.training.phases` — ``run_phase``: one ``TorchTrainer`` per phase (scaling, storage incl. S3,
  failure and checkpoint configs), skipped when the phase already finished with the same plan;
- :mod:`pipelines.training.loop` — the ``PhaseTask`` interface a stage implements per phase, and the per-worker
  loop (restore, DDP, AMP, LR schedule, step, validate, checkpoint, fault-injection hook for tests);
- :mod:`pipelines.training.checkpoints` — Ray Train checkpoint state, phase records and weights on the output;
- :mod:`pipelines.training.data` — dataset root ingest: id/URI sample tables, the deterministic per-epoch sample
  order (and the tutor's unpaired garment), the CPU decode map with error rows, worker-side tensors;
- :mod:`pipelines.training.config` — the shared config (``TrainingConfig``, phases, Ray Train settings, widths, VGG);
- :mod:`pipelines.training.common` — what phase tasks use: the VGG loss, the published optimizers, paired metrics;
- :mod:`pipelines.training.schedule` — the published LR schedule (constant, then linear decay per epoch).
"""
