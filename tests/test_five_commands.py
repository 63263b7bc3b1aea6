"""docs/catalog.md "Your own catalog in 5 commands", run as written (issue #14): the block's commands are taken from
the doc, run one by one in bash on a folder of photos this test makes (nested groups, a file name with spaces, a
TIFF, a 16-bit PNG, a text file), with a tiny student; then what each step promised is checked."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.catalog_helpers import write_student

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[1] / "docs" / "catalog.md"
MARKER = "<!-- five-commands:"


def doc_commands() -> tuple[dict[str, str], list[str]]:
    """The block after the marker: its variable assignments, and its commands (continuation lines joined)."""
    text = DOC.read_text()
    block = text[text.index(MARKER):].split("```bash\n", 1)[1].split("```", 1)[0]
    assigns, commands, current = {}, [], ""
    for line in block.splitlines():
        line = line.split("  #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        m = re.fullmatch(r"([A-Z_]+)=(\S+)", current.strip())
        if m:
            assigns[m.group(1)] = m.group(2)
        else:
            commands.append(current.strip())
        current = ""
    return assigns, commands


def _photo(path: Path, size: tuple[int, int], seed: int, fmt: str = "JPEG", deep: bool = False) -> None:
    """A person-like or garment-like picture: a light background with a darker block (size = height, width)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.full((h, w, 3), 235, np.uint8)
    img[h // 4: h * 3 // 4, w // 4: w * 3 // 4] = rng.integers(20, 200, 3, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if deep:  # 16-bit grayscale
        Image.fromarray(img[..., 0].astype(np.uint16) * 257).save(path, "PNG")
    else:
        Image.fromarray(img).save(path, fmt)


def make_shop(shop: Path) -> None:
    g, m = shop / "photos" / "garments", shop / "photos" / "models"
    _photo(g / "men" / "oxford-12.jpg", (160, 120), 1)
    _photo(g / "men" / "Blue Shirt (1).JPG", (200, 150), 2)
    _photo(g / "women" / "blouse.tif", (120, 90), 3, fmt="TIFF")
    _photo(g / "women" / "tee.png", (96, 72), 4, deep=True)
    (g / "women" / "notes.txt").write_text("not a photo\n")
    _photo(m / "men" / "oxford-12.jpg", (192, 128), 5)  # wears the men's oxford-12: the ground truth
    _photo(m / "men" / "tom.jpg", (150, 100), 6)
    _photo(m / "women" / "ann.png", (128, 96), 7, fmt="PNG")


def run_step(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=600,
                          cwd=str(DOC.parents[1]))


def test_five_commands_as_written(tmp_path, ray_session):
    assigns, commands = doc_commands()
    assert set(assigns) == {"SHOP", "STUDENT"} and len(commands) == 5
    shop, student = tmp_path / "shop", tmp_path / "students" / "student.pt"
    make_shop(shop)
    write_student(str(student))
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"  # what `python -m webbrowser` runs (its $BROWSER): record the URL
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = dict(os.environ, SHOP=str(shop), STUDENT=str(student), BROWSER=str(browser),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)

    results = [run_step(c, env) for c in commands[:4]]
    for c, r in zip(commands, results):
        assert r.returncode == 0, f"{c}\n{r.stderr[-3000:]}"

    # 1. import: ids, groups, the text file skipped with its reason, the ground-truth pair
    imported = json.loads((shop / "catalog" / "summary.json").read_text())
    assert (imported["garments"], imported["models"], imported["paired_models"]) == (4, 3, 1)
    assert [s["source"] for s in imported["skipped_files"]] == ["women/notes.txt"]
    assert pq.read_table(shop / "catalog" / "test_pairs.parquet").to_pylist() == [
        {"model_id": "men-oxford-12", "garment_id": "men-oxford-12", "paired": True}]

    # 2. catalog: only same-group pairs (2 men's garments x 2 men + 2 women's garments x 1 woman), each at its
    #    model photo's own size
    tryon = json.loads((shop / "tryon" / "summary.json").read_text())
    assert (tryon["pairs_total"], tryon["pairs_ok"], tryon["pairs_error"]) == (6, 6, 0)
    assert tryon["output_size"] == "original"
    version = tryon["student_version"]
    sizes = {"men-oxford-12": (192, 128), "men-tom": (150, 100), "women-ann": (128, 96)}
    images = sorted((shop / "tryon" / version).rglob("*.jpg"))
    assert len(images) == 6
    for path in images:
        with Image.open(path) as im:
            assert (im.height, im.width) == sizes[path.stem]
        assert path.parent.name.split("-")[0] == path.stem.split("-")[0], "a pair outside its group"

    # 3. the gallery was opened
    assert opened.read_text().strip() == f"file://{shop}/tryon/gallery/index.html"
    assert (shop / "tryon" / "gallery" / "index.html").is_file()

    # 4. evaluation scored the one pair with a ground truth
    report = json.loads((shop / "eval" / "report.json").read_text())
    scored = report["by_student_version"][version]
    assert (scored["pairs"], scored["ok"], scored["no_ground_truth"], scored["error"]) == (6, 1, 5, 0), scored

    # 5. a tiny untrained student misses the default SSIM threshold: refused with one line, nothing promoted;
    #    the documented --force --reason promotes it, recorded, and nightly picks it
    refused = run_step(commands[4], env)
    assert refused.returncode == 2 and "min_ssim" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (shop / "production").exists() or not list((shop / "production").rglob("*.json"))
    forced = run_step(commands[4] + ' --force --reason "five-commands test"', env)
    assert forced.returncode == 0, forced.stderr[-2000:]
    record = json.loads(next((shop / "production" / "promotions").glob("*.json")).read_text())
    assert record["forced"] is True and record["student_version"] == version
