"""One thin CLI per stage: ``python -m jobs.<stage>`` runs ``pipelines.stages.<stage>.run`` (see jobs/cli.py)."""
