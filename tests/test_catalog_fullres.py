"""Output at the person photo's own size (pfafn.fullres) and its catalog wiring (``--output-size``, ``--format``)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pfafn import imageio
from pfafn.checkpoint import save_checkpoint
from pfafn.fullres import canvas_grid, change_region, compose_fullres, garment_grid, pack_lowres
from pfafn.imageio import fit_geometry, fit_image
from pfafn.nn.flow import identity_grid
from pfafn.tryon import TryOnModel
from pipelines.core import storage
from pipelines.core.config import ConfigError
from pipelines.stages.catalog_tryon import (ORIGINAL_TILE_MAX, CatalogConfig, encode_output, image_key, load_results,
                                            resolve_output_size, run, tile_side)
from tests.catalog_helpers import TINY, png_bytes

H, W = 64, 48  # model canvas (4:3)


def _lowres(flow=None, rendered=0.0, blend=1.0, region=1.0, canvas_mask=1.0) -> np.ndarray:
    full = lambda v: torch.full((1, 1, H, W), float(v))  # noqa: E731
    return pack_lowres(identity_grid(1, H, W) if flow is None else flow, full(rendered).expand(1, 3, H, W),
                       full(blend), full(region), full(canvas_mask))[0]


def _laplacian_var(img: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: a standard sharpness measure (Pech-Pacheco et al., ICPR 2000)."""
    g = torch.from_numpy(img.astype(np.float32).mean(-1))[None, None]
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)[None, None]
    return float(F.conv2d(g, k).var())


def _stripes(h: int, w: int) -> np.ndarray:
    """A fine pattern (2-pixel stripes, a checker inset) that a 64×48 model canvas cannot hold."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.where(((x // 2) % 2 == 0)[..., None], [200, 30, 40], [250, 240, 230]).astype(np.uint8)
    inset = (y > h // 3) & (y < h // 2) & ((x // 3 + y // 3) % 2 == 0)
    img[inset] = (10, 10, 10)
    return img


def test_nothing_changed_returns_the_photo_exactly():
    rng = np.random.default_rng(0)
    person = rng.integers(0, 256, (210, 100, 3), dtype=np.uint8)  # portrait, not the canvas' aspect
    garment = rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)  # landscape
    canvas = torch.from_numpy(imageio.to_model_tensor(fit_image(person, H, W)))[None]
    region = change_region(canvas, canvas, torch.zeros(1, 1, H, W))
    assert float(region.max()) == 0.0
    low = _lowres(rendered=0.3, blend=0.0, region=0.0)
    out = compose_fullres(person, garment, None, low)
    assert out.shape == person.shape and np.array_equal(out, person)

    # a changed block: pixels outside its (dilated, feathered, upsampled) region are the original, bit for bit
    tryon = canvas.clone()
    tryon[..., 20:30, 10:20] = 1.0
    region = change_region(tryon, canvas, torch.zeros(1, 1, H, W))
    assert float(region[..., 22:28, 12:18].min()) == 1.0 and float(region[..., :10, :].max()) == 0.0
    low = pack_lowres(identity_grid(1, H, W), torch.ones(1, 3, H, W), torch.zeros(1, 1, H, W), region,
                      torch.ones(1, 1, H, W))[0]
    out = compose_fullres(person, garment, None, low)
    up = F.grid_sample(region, canvas_grid(fit_geometry(210, 100, H, W)), align_corners=True)[0, 0].numpy()
    assert np.array_equal(out[up == 0], person[up == 0]) and (up == 0).mean() > 0.5
    assert (out[up == 1] == 255).all()  # fully inside: the rendering (white here)


def test_garment_is_sampled_at_full_resolution():
    garment = _stripes(384, 288)
    person = np.full((384, 288, 3), 128, np.uint8)
    out = compose_fullres(person, garment, np.full((384, 288), 255, np.uint8), _lowres())
    # identity flow, same geometry for both photos: every person pixel samples its own garment pixel
    assert np.abs(out.astype(int) - garment.astype(int)).mean() < 1.0
    upscaled = np.asarray(Image.fromarray(fit_image(garment, H, W)).resize((288, 384), Image.Resampling.BICUBIC))
    sharp, plain, ref = _laplacian_var(out), _laplacian_var(upscaled), _laplacian_var(garment)
    assert sharp > 0.9 * ref and plain < 0.2 * ref, (sharp, plain, ref)
    # without a full-size mask the canvas mask is used (all garment here): the same sharp result
    assert np.array_equal(compose_fullres(person, garment, None, _lowres()), out)
    # the composite mask scales the garment: blend 0 → the rendering only
    assert (compose_fullres(person, garment, None, _lowres(blend=0.0)) == 128).all()


@pytest.mark.parametrize("src", [(300, 100), (100, 300), (64, 48), (200, 150)])
def test_letterbox_mapping(src):
    hs, ws = src
    geom = fit_geometry(hs, ws, H, W)
    y, x = np.mgrid[0:hs, 0:ws]
    smooth = np.stack([128 + 100 * np.sin(x / ws * 3), 128 + 100 * np.cos(y / hs * 3), np.full_like(x, 60.0)], -1)
    smooth = smooth.astype(np.uint8)
    # the canvas sampled with canvas_grid gives the photo back: no white bars, no shift
    canvas = torch.from_numpy(fit_image(smooth, H, W)).permute(2, 0, 1)[None].float()
    back = F.grid_sample(canvas, canvas_grid(geom), align_corners=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(back - smooth).mean() < 4.0
    # garment_grid inverts the garment's letterbox: photo pixel → canvas → flow value → the same photo pixel
    pts = np.stack([np.linspace(0, ws - 1, 7), np.linspace(0, hs - 1, 7)], -1)
    canvas_px = geom.map_points(pts)
    flow = torch.from_numpy(canvas_px / [(W - 1) / 2, (H - 1) / 2] - 1).T.reshape(1, 2, 1, 7)
    norm = garment_grid(flow, geom)[0, 0].double().numpy()
    assert np.allclose((norm + 1) * [(ws - 1) / 2, (hs - 1) / 2], pts, atol=1e-3)


def test_blend_mask_is_the_composition_factor():
    torch.manual_seed(0)
    model = TryOnModel(TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1, torch.ones(1, 1, 64, 64))
    assert torch.allclose(out.composite_mask, out.blend_mask * out.warped_mask)


def test_output_size_and_format_config(tmp_path):
    base = dict(garments="g.parquet", models=str(tmp_path / "m.parquet"), output="out", student="s.pt")
    with pytest.raises(ConfigError, match="output_size"):
        CatalogConfig(**base, output_size="huge").validate()
    with pytest.raises(ConfigError, match="format"):
        CatalogConfig(**base, format="gif").validate()
    table = pa.table({"model_id": ["m"], "image_uri": ["x.png"]})
    pq.write_table(table, base["models"])
    assert resolve_output_size(CatalogConfig(**base)) == "model"
    assert resolve_output_size(CatalogConfig(**base, output_size="original")) == "original"
    pq.write_table(table.replace_schema_metadata({"pfafn.producer": "import_catalog"}), base["models"])
    assert resolve_output_size(CatalogConfig(**base)) == "original"
    assert resolve_output_size(CatalogConfig(**base, output_size="model")) == "model"
    # original output hands ~1.5 MB per pair to the write step: its tiles are at most ORIGINAL_TILE_MAX a side
    assert tile_side(CatalogConfig(**base, tile_size=32)) == ORIGINAL_TILE_MAX == 8
    assert tile_side(CatalogConfig(**base, tile_size=32, output_size="model")) == 32
    assert tile_side(CatalogConfig(**base, tile_size=4)) == 4


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")])
def test_output_formats(fmt, pil):
    img = _stripes(40, 30)
    data = encode_output(img, {"format": fmt, "jpeg_quality": 90})
    assert Image.open(io.BytesIO(data)).format == pil and imageio.decode_image(data).shape == img.shape
    if fmt == "png":
        assert np.array_equal(imageio.decode_image(data), img)
    assert image_key("/o", "v1", "g", "m", fmt).endswith({"jpeg": "/v1/g/m.jpg", "png": "/v1/g/m.png",
                                                           "webp": "/v1/g/m.webp"}[fmt])


# ----------------------------------------------------------------------------------------------------------------------
# End to end on the session Ray.

GRAY = 128
RECT = (slice(40, 80), slice(50, 90))  # the part of each person photo the try-on changes


def _person(h: int, w: int) -> np.ndarray:
    img = np.full((h, w, 3), GRAY, np.uint8)
    img[RECT] = (220, 30, 30)
    return img


def _student(dest: str) -> str:
    """A tiny student whose generator outputs exactly 0: rendered = mid-grey, blend = 0.5. With an all-zero garment
    mask nothing but the red rectangle changes (it differs from the grey rendering), so the unchanged pixels are
    known without running the model."""
    torch.manual_seed(0)
    model = TryOnModel(TINY).eval()
    with torch.no_grad():
        model.gen.model.model[6].weight.zero_()
    return save_checkpoint(dest, warp=model.warp, gen=model.gen, kind="student", meta={"test": True})


def _catalog(root, producer: str | None) -> tuple[str, str, dict]:
    photos = {"m0": _person(128, 128), "m1": _person(100, 150)}  # the canvas' aspect; landscape (bars)
    garment = _stripes(120, 90)
    garment[:10], garment[-10:], garment[:, :10], garment[:, -10:] = 255, 255, 255, 255
    files = {"g0.png": garment, "g0_mask.png": np.zeros((120, 90), np.uint8), "g1.png": garment,
             **{f"{k}.png": v for k, v in photos.items()}}
    for name, arr in files.items():
        (root / name).write_bytes(png_bytes(arr))
    g = pa.table({"garment_id": ["g0", "g1"], "image_uri": [str(root / "g0.png"), str(root / "g1.png")],
                  "mask_uri": [str(root / "g0_mask.png"), None]})
    m = pa.table({"model_id": list(photos), "image_uri": [str(root / f"{k}.png") for k in photos]})
    if producer:
        m = m.replace_schema_metadata({"pfafn.producer": producer})
    pq.write_table(g, root / "garments.parquet")
    pq.write_table(m, root / "models.parquet")
    return str(root / "garments.parquet"), str(root / "models.parquet"), photos


def _run(root, student, output, **kw) -> dict:
    return run(CatalogConfig(garments=str(root / "garments.parquet"), models=str(root / "models.parquet"),
                             output=output, student=student, height=64, width=64, batch_size=4, tile_size=2,
                             precision="fp32", actors=1, cpus_per_actor=0.5, torch_threads=1, gallery_size=2,
                             channels_last=False, min_mask_confidence=0.0, **kw))


def test_catalog_output_at_the_photos_size(ray_session, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _, _, photos = _catalog(root, producer=None)
    student = str(tmp_path / "student.pt")
    _student(student)
    out = str(tmp_path / "out")
    s = _run(root, student, out, output_size="original", format="png")
    assert (s["pairs_ok"], s["pairs_error"], s["output_size"], s["format"]) == (4, 0, "original", "png")
    rows = load_results(out).to_pylist()
    for r in rows:
        photo = photos[r["model_id"]]
        assert (r["output_height"], r["output_width"]) == photo.shape[:2] and r["image_uri"].endswith(".png")
        img = Image.open(io.BytesIO(storage.read_bytes(r["image_uri"])))
        assert img.format == "PNG" and img.size == (photo.shape[1], photo.shape[0])
        got = np.asarray(img.convert("RGB"))
        if r["garment_id"] != "g0":
            continue  # g1's mask is extracted: its garment lands wherever the random flow puts it
        # outside the rectangle (plus the dilation/feather margin, and the border next to the letterbox bars)
        # every pixel is the original; inside it the grey rendering replaced the red
        keep = np.ones(photo.shape[:2], bool)
        keep[RECT[0].start - 12:RECT[0].stop + 12, RECT[1].start - 12:RECT[1].stop + 12] = False
        keep[:8], keep[-8:] = False, False
        assert np.array_equal(got[keep], photo[keep])
        assert np.abs(got[50:70, 60:80].astype(int) - GRAY).max() <= 2


@pytest.mark.slow
def test_catalog_auto_size_webp(ray_session, tmp_path):
    """auto = original for a catalog written by jobs.import_catalog; WebP output (the format itself is checked fast
    in test_output_formats)."""
    root = tmp_path / "data"
    root.mkdir()
    _, _, photos = _catalog(root, producer="import_catalog")
    student = str(tmp_path / "student.pt")
    _student(student)
    s = _run(root, student, str(tmp_path / "out_webp"), format="webp")
    assert (s["pairs_ok"], s["output_size"]) == (4, "original")
    for r in load_results(str(tmp_path / "out_webp")).to_pylist():
        img = Image.open(io.BytesIO(storage.read_bytes(r["image_uri"])))
        assert img.format == "WEBP" and img.size[::-1] == photos[r["model_id"]].shape[:2]


def test_write_step_reads_the_mask_as_the_decode_step_does(tmp_path):
    """The full-size composition gets the garment mask the decode step used: a mask file of another resolution (same
    framing) resized to the photo, not dropped; another framing is the garment mask's error."""
    from pipelines.batch import InputError, read_garment
    from pipelines.stages.catalog_tryon import OriginalPhotos

    photo, half, wide = (str(tmp_path / n) for n in ("g.png", "g_mask.png", "w_mask.png"))
    storage.write_bytes(photo, png_bytes(np.full((64, 48, 3), 90, np.uint8)))
    storage.write_bytes(half, imageio.encode_png(np.full((32, 24, 3), 255, np.uint8)))
    storage.write_bytes(wide, imageio.encode_png(np.full((32, 32, 3), 255, np.uint8)))
    cfg = {"allowed_roots": [str(tmp_path)], "max_image_pixels": 10**7, "max_image_bytes": 10**7,
           "read_timeout_s": 10.0}
    meta = {"garment_uris": [photo, photo, photo], "mask_uris": [half, "", wide]}
    originals = OriginalPhotos(meta, cfg)
    image, mask = originals.garment(0)
    assert image.shape == (64, 48, 3) and mask.shape == (64, 48) and float(mask.min()) == 1.0
    assert originals.garment(1)[1] is None
    with pytest.raises(InputError, match="garment mask: .*aspect"):
        originals.garment(2)
    assert read_garment(photo, half, cfg)[1].shape == (64, 48)
