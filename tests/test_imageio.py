"""pfafn.imageio: every bad input class gives its typed error; every unusual valid class decodes correctly."""
from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pfafn import imageio
from pfafn.imageio import (
    EmptyImageError,
    ImageDecodeError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    UnsupportedImageError,
)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG from raw filtered scanlines (or with an empty IDAT when ``rows`` is None: header only)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"")
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _quadrants(h: int = 20, w: int = 40) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (255, 0, 0)
    img[:, w // 2 :] = (0, 0, 255)
    return img


def _rgb_noise(h=64, w=48, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_empty_bytes():
    with pytest.raises(EmptyImageError):
        imageio.decode_image(b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_images(fmt):
    data = _save(Image.fromarray(_rgb_noise()), fmt, **({"quality": 90} if fmt != "PNG" else {}))
    for cut in (len(data) // 2, 30, 3):
        with pytest.raises(TruncatedImageError) as info:
            imageio.decode_image(data[:cut])
        assert fmt.lower()[:3] in info.value.reason.lower() or "truncated" in info.value.reason


def test_random_bytes_and_text_are_not_images():
    rng = np.random.default_rng(1)
    with pytest.raises(NotAnImageError, match="unrecognised"):
        imageio.decode_image(bytes([0x13, 0x37]) + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(NotAnImageError, match="text"):
        imageio.decode_image(b"<html><body>404 Not Found</body></html>\n")


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_other_image_formats_are_unsupported(fmt):
    with pytest.raises(UnsupportedImageError, match=fmt):
        imageio.decode_image(_save(Image.fromarray(_rgb_noise(8, 8)), fmt))


def test_decompression_bomb_header_is_refused_before_decoding():
    bomb = _png_raw(100_000, 100_000, 8, 2, None)  # ~100 bytes declaring 10^10 pixels
    assert len(bomb) < 200
    with pytest.raises(ImageTooLargeError):
        imageio.decode_image(bomb)
    with pytest.raises(ImageTooLargeError):
        imageio.decode_mask(bomb)
    # Between Pillow's warning and error thresholds, with a permissive caller limit: the warning is an error too.
    with pytest.raises(ImageTooLargeError):
        imageio.decode_image(_png_raw(10_000, 10_000, 8, 2, None), max_pixels=10**12)


def test_pixel_limit_is_checked_from_the_header():
    header_only = _png_raw(3000, 3000, 8, 2, None)  # decoding would fail as truncated; the size check comes first
    with pytest.raises(ImageTooLargeError, match="limit 1000000"):
        imageio.decode_image(header_only, max_pixels=1_000_000)
    ok = _save(Image.fromarray(_rgb_noise(100, 100)), "PNG")
    with pytest.raises(ImageTooLargeError):
        imageio.decode_image(ok, max_pixels=9_999)
    assert imageio.decode_image(ok, max_pixels=10_000).shape == (100, 100, 3)


def test_errors_are_one_line_typed_and_picklable():
    for data in (b"", b"hello world", _png_raw(100_000, 100_000, 8, 2, None)):
        with pytest.raises(ImageDecodeError) as info:
            imageio.decode_image(data)
        err = info.value
        assert err.reason and "\n" not in err.reason
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and again.reason == err.reason


# ----------------------------------------------------------------------------------------------------------------------
# Unusual valid inputs


def test_plain_rgb_png_and_webp_lossless_are_exact():
    img = _rgb_noise()
    assert np.array_equal(imageio.decode_image(_save(Image.fromarray(img), "PNG")), img)
    assert np.array_equal(imageio.decode_image(_save(Image.fromarray(img), "WEBP", lossless=True)), img)


def test_grayscale_and_bilevel():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = imageio.decode_image(_save(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (16, 16, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)
    bits = Image.fromarray(gray > 127).convert("1")
    assert set(np.unique(imageio.decode_image(_save(bits, "PNG")))) == {0, 255}


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = [[0, 128, 255, 255]] * 4  # black with varying alpha
    out = imageio.decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[0, :, 0].tolist() == [255, 127, 0, 0]
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 128, np.uint8)], -1), "LA")
    assert imageio.decode_image(_save(la, "PNG"))[0, 0].tolist() == [127, 127, 127]
    webp = _save(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True)
    assert imageio.decode_image(webp)[0, :, 1].tolist() == [255, 127, 0, 0]


def test_palette_with_and_without_transparency():
    p = Image.new("P", (6, 2))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    out = imageio.decode_image(_save(p, "PNG"))
    assert out[0, 0].tolist() == [0, 255, 0] and out[1, 1].tolist() == [255, 0, 0]
    out = imageio.decode_image(_save(p, "PNG", transparency=0))  # index 0 (red) transparent → white
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 255, 0]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red
    out = imageio.decode_image(_save(cmyk, "JPEG", quality=95))
    assert out.shape == (16, 16, 3)
    assert np.abs(out[8, 8].astype(int) - [255, 0, 0]).max() <= 6


def test_16bit_gray_and_rgb_png():
    gray = np.array([[0, 257, 32768, 65535]], dtype=">u2")
    rows = b"".join(b"\x00" + r.tobytes() for r in gray)
    out = imageio.decode_image(_png_raw(4, 1, 16, 0, rows))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255] and out.dtype == np.uint8
    rgb = np.zeros((2, 3, 3), dtype=">u2")
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 2570
    rows = b"".join(b"\x00" + r.tobytes() for r in rgb)
    out = imageio.decode_image(_png_raw(3, 2, 16, 2, rows))
    assert out.shape == (2, 3, 3) and out[1, 2].tolist() == [255, 128, 10]


@pytest.mark.parametrize(("orientation", "top", "bottom", "shape"), [
    (1, (255, 0, 0), (0, 0, 255), (20, 40)),  # as stored: left red, right blue
    (3, (0, 0, 255), (255, 0, 0), (20, 40)),  # rotated 180: left blue, right red
    (6, (255, 0, 0), (0, 0, 255), (40, 20)),  # rotate 90 CW to view: the left (red) half goes on top
    (8, (0, 0, 255), (255, 0, 0), (40, 20)),  # rotate 90 CCW to view: the right (blue) half goes on top
])
def test_exif_orientation_is_applied(orientation, top, bottom, shape):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(Image.fromarray(_quadrants()), "JPEG", quality=95, exif=exif.tobytes())
    out = imageio.decode_image(data)
    assert out.shape[:2] == shape
    assert np.abs(out[1, 1].astype(int) - top).max() < 40
    assert np.abs(out[-2, -2].astype(int) - bottom).max() < 40


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 7), (1, 500), (333, 2)])
def test_odd_sizes(h, w):
    img = _rgb_noise(h, w, seed=h * w)
    assert np.array_equal(imageio.decode_image(_save(Image.fromarray(img), "PNG")), img)
    assert imageio.decode_image(_save(Image.fromarray(img), "JPEG")).shape == (h, w, 3)


def test_jpeg_draft_decodes_big_photos_smaller_but_not_below_the_target():
    big = np.kron(_rgb_noise(25, 20), np.ones((80, 80, 1), np.uint8))  # 2000×1600
    data = _save(Image.fromarray(big), "JPEG", quality=85)
    out = imageio.decode_image(data, draft_size=(256, 192))
    assert out.shape[0] >= 256 and out.shape[1] >= 192 and out.shape[0] < 2000
    assert imageio.decode_image(data).shape == (2000, 1600, 3)


def test_decode_mask_modes():
    gray = np.array([[0, 128, 255]], np.uint8)
    assert np.allclose(imageio.decode_mask(_save(Image.fromarray(gray, "L"), "PNG")), [[0, 128 / 255, 1]])
    bits = imageio.decode_mask(_save(Image.fromarray(gray > 100).convert("1"), "PNG"))
    assert bits.dtype == np.float32 and bits.tolist() == [[0.0, 1.0, 1.0]]
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = [0, 255, 255]
    assert imageio.decode_mask(_save(Image.fromarray(rgba, "RGBA"), "PNG")).tolist() == [[0.0, 1.0, 1.0]]
    rows = b"\x00" + np.array([0, 65535], ">u2").tobytes()
    assert imageio.decode_mask(_png_raw(2, 1, 16, 0, rows)).tolist() == [[0.0, 1.0]]
    with pytest.raises(TruncatedImageError):
        imageio.decode_mask(b"\x89PNG\r\n\x1a\n")


# ----------------------------------------------------------------------------------------------------------------------
# Resize policy, encoding, tensors


def test_fit_image_pads_centred_with_fill():
    img = np.zeros((100, 50, 3), np.uint8)  # tall and narrow: 2.56× → 256×128, 32 px padding each side
    out = imageio.fit_image(img, 256, 192)
    g = imageio.fit_geometry(100, 50, 256, 192)
    assert (g.new_height, g.new_width, g.top, g.left) == (256, 128, 0, 32)
    assert out.shape == (256, 192, 3) and out.dtype == np.uint8
    assert (out[:, :32] == 255).all() and (out[:, 160:] == 255).all() and (out[:, 32:160] == 0).all()
    wide = imageio.fit_image(np.zeros((10, 40, 3), np.uint8), 256, 192, fill=(1, 2, 3))
    g = imageio.fit_geometry(10, 40, 256, 192)
    assert (g.new_height, g.new_width, g.top, g.left) == (48, 192, 104, 0)
    assert wide[0, 0].tolist() == [1, 2, 3] and (wide[104:152] == 0).all()


def test_fit_image_same_aspect_is_a_plain_resize_and_same_size_a_copy():
    img = _rgb_noise(512, 384)
    out = imageio.fit_image(img, 256, 192)
    assert out.shape == (256, 192, 3) and not imageio.fit_geometry(512, 384, 256, 192).padded
    assert abs(float(out.mean()) - float(img.mean())) < 3
    same = imageio.fit_image(img, 512, 384)
    assert np.array_equal(same, img) and same is not img
    up = imageio.fit_image(_rgb_noise(64, 48), 256, 192)  # upscale path
    assert up.shape == (256, 192, 3)


def test_fit_mask_shares_the_geometry_and_pads_zero():
    mask = np.ones((100, 50), bool)
    out = imageio.fit_mask(mask, 256, 192)
    assert out.dtype == np.float32 and out.shape == (256, 192)
    assert (out[:, :32] == 0).all() and (out[:, 32:160] == 1).all()
    soft = imageio.fit_mask(np.linspace(0, 1, 400 * 300, dtype=np.float32).reshape(400, 300), 256, 192)
    assert 0.0 <= soft.min() and soft.max() <= 1.0
    g = imageio.fit_geometry(100, 50, 256, 192)
    assert np.allclose(g.map_points(np.array([[0.0, 0.0], [49.0, 99.0]])), [[32.78, 0.78], [158.22, 254.22]])


def test_encode_round_trips():
    img = _rgb_noise(33, 17)
    assert np.array_equal(imageio.decode_image(imageio.encode_png(img)), img)
    smooth = np.kron(_rgb_noise(4, 3), np.ones((16, 16, 1), np.uint8))
    back = imageio.decode_image(imageio.encode_jpeg(smooth, quality=95))
    assert np.abs(back.astype(int) - smooth).mean() < 4
    assert imageio.decode_mask(imageio.encode_png(np.eye(4, dtype=bool))).tolist() == np.eye(4).tolist()
    with pytest.raises(ValueError):
        imageio.encode_jpeg(img.astype(np.float32))


def test_model_tensor_conversions():
    img = _rgb_noise(8, 6)
    t = imageio.to_model_tensor(img)
    assert t.shape == (3, 8, 6) and t.dtype == np.float32 and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(imageio.from_model_tensor(t), img)
    batch = imageio.to_model_tensor(np.stack([img, img]))
    assert batch.shape == (2, 3, 8, 6) and np.array_equal(imageio.from_model_tensor(batch)[1], img)
    assert imageio.from_model_tensor(np.full((3, 2, 2), np.nan, np.float32))[0, 0].tolist() == [128, 128, 128]
    m = imageio.mask_to_tensor(np.array([[0, 255]], np.uint8))
    assert m.shape == (1, 1, 2) and m.tolist() == [[[0.0, 1.0]]]
    assert imageio.mask_from_tensor(m, threshold=0.5).tolist() == [[False, True]]


# ----------------------------------------------------------------------------------------------------------------------
# TIFF, AVIF, HEIC (issue #14) and the mask-size rule


def _tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD declares ``width×height`` RGB and points at no pixel data."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 0), (277, 3, 3),
            (278, 4, height), (279, 4, 0)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00"


avif = pytest.mark.skipif(not imageio._plugin_available("AVIF"), reason="this Pillow has no AVIF plugin")


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate"])
def test_tiff_decodes_exactly(compression):
    img = _rgb_noise()
    data = _save(Image.fromarray(img), "TIFF", **({"compression": compression} if compression else {}))
    assert imageio.sniff_format(data) == "TIFF"
    assert np.array_equal(imageio.decode_image(data), img)
    assert imageio.probe_image(data) == imageio.ImageInfo("TIFF", 48, 64)


def test_16bit_and_multipage_tiff():
    gray = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = _save(Image.fromarray(gray), "TIFF")
    assert imageio.decode_image(data)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.allclose(imageio.decode_mask(data), [[0.0, 257 / 65535, 32768 / 65535, 1.0]])
    first, second = _rgb_noise(8, 6, seed=1), _rgb_noise(30, 20, seed=2)
    pages = _save(Image.fromarray(first), "TIFF", save_all=True, append_images=[Image.fromarray(second)])
    assert np.array_equal(imageio.decode_image(pages), first), "a multi-page TIFF is its first page"


def test_tiff_orientation_and_camera_raw_preview():
    exif = Image.Exif()
    exif[0x0112] = 3
    data = _save(Image.fromarray(_quadrants()), "TIFF", exif=exif)
    out = imageio.decode_image(data)
    assert out[0, 0].tolist() == [0, 0, 255], "EXIF orientation 3 (rotated 180) is applied to TIFF as well"
    preview = _save(Image.fromarray(_rgb_noise(12, 16)), "TIFF", tiffinfo={254: 1})
    with pytest.raises(UnsupportedImageError, match="reduced-resolution preview"):
        imageio.decode_image(preview)


def test_tiff_size_limits_and_truncation_hold():
    with pytest.raises(ImageTooLargeError):
        imageio.decode_image(_tiff_header_only(100_000, 100_000))  # refused from the header, nothing decoded
    with pytest.raises(ImageTooLargeError, match="limit 1000000"):
        imageio.probe_image(_tiff_header_only(2000, 2000), max_pixels=1_000_000)
    data = _save(Image.fromarray(_rgb_noise()), "TIFF", compression="tiff_lzw")
    for cut in (len(data) // 2, 30, 3):
        with pytest.raises(TruncatedImageError, match="TIFF"):
            imageio.decode_image(data[:cut])
    raw = _save(Image.fromarray(_rgb_noise()), "TIFF")
    with pytest.raises(TruncatedImageError):  # header intact, pixel strip cut: fails at decode, not at probe
        imageio.decode_image(raw[:-500])


@avif
def test_avif_decodes_and_keeps_the_limits():
    smooth = np.kron(_rgb_noise(4, 3), np.ones((16, 16, 1), np.uint8))
    data = _save(Image.fromarray(smooth), "AVIF", quality=95)
    assert imageio.sniff_format(data) == "AVIF" and imageio.probe_image(data).format == "AVIF"
    out = imageio.decode_image(data)
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).mean() < 6
    with pytest.raises(ImageTooLargeError):
        imageio.decode_image(data, max_pixels=1000)
    for cut in (len(data) // 2, 30):
        with pytest.raises(TruncatedImageError, match="AVIF"):
            imageio.decode_image(data[:cut])


def test_heic_without_a_decoder_is_a_clear_unsupported_error(monkeypatch):
    monkeypatch.setitem(imageio._plugins, "HEIC", False)  # as on a machine without pillow_heif
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    generic = b"\x00\x00\x00\x14ftypmif1\x00\x00\x00\x00hevc" + bytes(64)
    for data in (heic, generic):
        assert imageio.sniff_format(data) == "HEIC"
        with pytest.raises(UnsupportedImageError) as info:
            imageio.decode_image(data)
        assert info.value.reason == "unsupported format: HEIC (no HEIF decoder installed)"
    assert imageio.sniff_format(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif") == "AVIF"
    assert "HEIC" not in imageio.accepted_formats()


def test_mask_of_another_resolution_is_resized_only_at_the_same_aspect():
    mask = np.zeros((50, 40), np.float32)
    mask[10:40, 8:32] = 1.0
    up = imageio.match_mask_size(mask, 100, 80)
    assert up.shape == (100, 80) and up[50, 40] == 1.0 and up[5, 5] == 0.0
    assert np.array_equal(imageio.match_mask_size(mask, 50, 40), mask)
    assert imageio.match_mask_size(np.zeros((333, 250), np.uint8), 1000, 750).shape == (1000, 750)  # 0.1 % off
    with pytest.raises(ValueError, match=r"mask is 40x50 but the image is 40x40"):
        imageio.match_mask_size(mask, 40, 40)
    with pytest.raises(ValueError, match="differ by more than 1%"):
        imageio.match_mask_size(np.zeros((100, 102), np.float32), 100, 100)  # 2 % off
