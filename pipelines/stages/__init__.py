"""One module per job, named like the job (``python -m jobs.X`` runs ``pipelines.stages.X.run``)."""
