"""Shared infrastructure of every stage: config, errors, storage, manifests, run locks, Ray set-up, galleries."""
