import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# Fixture modules live in tests/fixtures/; add new ones here.
pytest_plugins = ["tests.fixtures.ray_local", "tests.fixtures.s3", "tests.fixtures.ray_head",
                  "tests.fixtures.ray_cluster"]
