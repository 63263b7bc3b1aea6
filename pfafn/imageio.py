"""Robust image I/O for untrusted catalog photos: decode with typed errors, fit to the model size, encode, and
convert to / from model tensors. Pure numpy + Pillow (no torch, no Ray).

Decode policy (:func:`decode_image`)
    * Formats: JPEG (incl. MPO), PNG (incl. APNG: first frame), WebP (first frame), TIFF (first page; 8/16-bit,
      float, CMYK, any compression Pillow's libtiff reads) and AVIF (first frame) where this Pillow has its AVIF
      plugin; HEIC/HEIF only where the ``pillow_heif`` plugin is importable (else :class:`UnsupportedImageError`
      "unsupported format: HEIC (no HEIF decoder installed)"). The format is sniffed from the magic bytes (for the
      ISO-BMFF family from the ``ftyp`` brands); other recognised image formats (GIF, BMP, JPEG 2000, ...) raise
      :class:`UnsupportedImageError`, anything else :class:`NotAnImageError`. Only the sniffed format's Pillow
      plugin may open the bytes, so a file cannot pass as another format.
    * Size: the pixel count declared in the header is checked against ``max_pixels`` *before* any pixel is decoded
      (:class:`ImageTooLargeError`); Pillow's own ``DecompressionBombError`` / ``DecompressionBombWarning`` are
      turned into the same error. PNG text/ICC chunks over Pillow's limits count as too large as well.
    * EXIF orientation (tag 0x0112, JPEG/WebP/PNG eXIf/TIFF; AVIF's irot/imir, which Pillow reports as that tag) is
      applied, so the array is upright as a viewer shows it.
      A corrupt EXIF block is ignored (the pixels are still valid); the image is then returned as stored.
    * Modes → RGB uint8: grayscale / bilevel replicated; palette expanded (its transparency honoured); CMYK and
      YCbCr/LAB/HSV converted by Pillow (ICC profiles are *not* applied; pixel values are treated as sRGB);
      16-bit (``I;16*``, and ``I``) scaled to 8 bits with rounding; 16-bit RGB(A) PNG is reduced to 8 bits by Pillow.
    * Transparency (LA, RGBA, PA, P+tRNS) is composited **on white**, the colour of a studio product background:
      ``out = rgb·α + 255·(1-α)``.

Resize policy (:func:`fit_image`, :func:`fit_mask`, :func:`fit_geometry`)
    The image is scaled by ``s = min(H/h, W/w)`` (aspect preserved) to ``round(h·s) × round(w·s)`` and centred on an
    ``H×W`` canvas; the remaining border is filled with ``fill`` (white by default) for images and 0 for masks.
    When the aspect already matches (the rounded size equals the target), it is a plain resize without padding;
    an image already at the target size is returned as a copy. Downscaling uses Lanczos (with Pillow's
    ``reducing_gap`` box pre-reduction, fast and alias-free), upscaling bicubic. Masks use box averaging down and
    bilinear up (no Lanczos overshoot), clipped to [0, 1].

Tensors: images in model space are float32 ``3×H×W`` (or ``B×3×H×W``) in [-1, 1]; masks float32 ``1×H×W`` in [0, 1].
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "EmptyImageError",
    "TruncatedImageError",
    "NotAnImageError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "sniff_format",
    "ImageInfo",
    "probe_image",
    "accepted_formats",
    "MASK_ASPECT_TOLERANCE",
    "match_mask_size",
    "decode_image",
    "decode_mask",
    "FitGeometry",
    "fit_geometry",
    "fit_image",
    "fit_mask",
    "encode_jpeg",
    "encode_png",
    "encode_webp",
    "to_model_tensor",
    "from_model_tensor",
    "mask_to_tensor",
    "mask_from_tensor",
]

#: Default pixel limit: 50 MP (an 8000×6000 camera frame is 48 MP). Decoded RGB at the limit is ~150 MB.
DEFAULT_MAX_PIXELS = 50_000_000

_ORIENTATION_TAG = 0x0112
_TIFF_NEW_SUBFILE_TYPE = 254  # bit 0: "reduced-resolution version of another image" (TIFF 6.0, section 8)


# ----------------------------------------------------------------------------------------------------------------------
# Errors


class ImageDecodeError(ValueError):
    """The bytes are not a usable image. ``reason`` is one line, safe to put in an error row."""

    def __init__(self, reason: str):
        self.reason = " ".join(str(reason).split())
        super().__init__(self.reason)

    def __reduce__(self):
        return (type(self), (self.reason,))


class EmptyImageError(ImageDecodeError):
    """Zero bytes."""


class TruncatedImageError(ImageDecodeError):
    """A recognised format whose data ends early or is corrupt."""


class NotAnImageError(ImageDecodeError):
    """Not an image at all (text, HTML error page, random bytes)."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than allowed (decompression-bomb guard), checked from the header before decoding."""


class UnsupportedImageError(ImageDecodeError):
    """A real image in a format or pixel mode this pipeline does not accept."""


# ----------------------------------------------------------------------------------------------------------------------
# Sniffing

# Pillow's JPEG opener also returns MPO (multi-picture JPEG from phone cameras) files; the first picture is used.
# Sniffed format -> the Pillow plugins allowed to open it. AVIF needs Pillow's AVIF plugin (Pillow >= 11.3 built
# with libavif); HEIC the third-party pillow_heif plugin (its opener registers the format "HEIF").
_ALWAYS = {"JPEG": ["JPEG"], "PNG": ["PNG"], "WEBP": ["WEBP"], "TIFF": ["TIFF"]}
_OPTIONAL = {"AVIF": (["AVIF"], "no AVIF decoder in this Pillow"),
             "HEIC": (["HEIF"], "no HEIF decoder installed")}
_plugins: dict[str, bool] = {}

# ISO-BMFF ``ftyp`` brands (ISO/IEC 23008-12 HEIF, AV1 Image File Format): the major brand, else the compatible ones.
_AVIF_BRANDS = (b"avif", b"avis")
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")
_HEIF_BRANDS = (b"mif1", b"msf1", b"miaf")


def _plugin_available(fmt: str) -> bool:
    """Whether this process can decode the optional format ``fmt`` (checked once)."""
    if fmt not in _plugins:
        if fmt == "AVIF":
            from PIL import features

            _plugins[fmt] = bool(features.check("avif"))
        else:
            try:
                import pillow_heif  # type: ignore[import-not-found]

                pillow_heif.register_heif_opener()
                _plugins[fmt] = True
            except Exception:  # not installed, or a broken install: the format is reported unsupported
                _plugins[fmt] = False
    return _plugins[fmt]


def accepted_formats() -> list[str]:
    """The formats :func:`decode_image` decodes in this process (sniffed names, e.g. ``["JPEG", ..., "AVIF"]``)."""
    return list(_ALWAYS) + [f for f in _OPTIONAL if _plugin_available(f)]


def _bmff_format(data: bytes) -> str | None:
    """``AVIF`` / ``HEIC`` for an ISO-BMFF image file (``....ftyp`` + brands), else None."""
    head = bytes(data[:64])
    if head[4:8] != b"ftyp" or len(head) < 12:
        return None
    box = int.from_bytes(head[:4], "big")
    major = head[8:12]
    compatible = [head[k:k + 4] for k in range(16, min(max(box, 16), len(head)) - 3, 4)]
    for brands, name in ((_AVIF_BRANDS, "AVIF"), (_HEIC_BRANDS, "HEIC")):
        if major in brands:
            return name
    if major in _HEIF_BRANDS or any(b in _HEIF_BRANDS for b in compatible):
        if any(b in _AVIF_BRANDS for b in compatible):
            return "AVIF"
        return "HEIC"  # any other HEIF (HEVC-coded in practice): pillow_heif's family
    return None


def _is_prefix(head: bytes, magic: bytes, at_least: int = 1) -> bool:
    """``head`` is a cut-short ``magic`` (a file truncated inside its signature) of at least ``at_least`` bytes."""
    return at_least <= len(head) < len(magic) and magic.startswith(head)


def sniff_format(data: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"``, ``"WEBP"``, ``"TIFF"``, ``"AVIF"``, ``"HEIC"`` or the name of another recognised image
    format; None for anything else. A prefix of a signature (a file cut inside its magic) sniffs as that format
    (TIFF from 2 bytes on: ``II`` / ``MM``)."""
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff") or _is_prefix(head, b"\xff\xd8\xff"):
        return "JPEG"
    png = b"\x89PNG\r\n\x1a\n"
    if head.startswith(png) or _is_prefix(head, png):
        return "PNG"
    if head[:4] == b"RIFF" and (head[8:12] == b"WEBP" or (len(head) < 12 and b"WEBP".startswith(head[8:12]))):
        return "WEBP"
    if _is_prefix(head, b"RIFF"):
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*") or _is_prefix(head, b"II*\x00", 2) or _is_prefix(head, b"MM\x00*", 2):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 10 and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    bmff = _bmff_format(data)
    if bmff is not None:
        return bmff
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "JPEG2000"
    if head[:4] == b"8BPS":
        return "PSD"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ICO"
    if head[:4] == b"qoif":
        return "QOI"
    if head[:4] == b"%PDF":
        return "PDF"
    text = bytes(data[:1024]).lstrip().lower()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text):
        return "SVG"
    return None


def _describe_non_image(data: bytes) -> str:
    """What the bytes look like, never what they say: an error reason ends up in result rows, logs and galleries, so
    quoting the data would leak the start of whatever file a manifest pointed at (a credentials file, a token)."""
    head = bytes(data[:256])
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"not an image: looks like text ({len(data)} bytes)"
    return f"not an image: unrecognised binary data ({len(data)} bytes)"


# ----------------------------------------------------------------------------------------------------------------------
# Decoding


def _open(data: bytes, max_pixels: int) -> tuple[Image.Image, str]:
    """Open (header only) and check the pixel budget. Returns the lazily-decoding image and its format."""
    if data is None or len(data) == 0:
        raise EmptyImageError("empty image: 0 bytes")
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError(_describe_non_image(data))
    plugins = _ALWAYS.get(fmt)
    if plugins is None and fmt in _OPTIONAL:
        if not _plugin_available(fmt):
            raise UnsupportedImageError(f"unsupported format: {fmt} ({_OPTIONAL[fmt][1]})")
        plugins = _OPTIONAL[fmt][0]
    if plugins is None:
        raise UnsupportedImageError(f"unsupported format: {fmt} (accepted: {', '.join(accepted_formats())})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=plugins)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large: {_first_clause(exc)}") from None
    except UnidentifiedImageError:
        raise TruncatedImageError(f"truncated or corrupt {fmt}: header unreadable ({len(data)} bytes)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise _load_error(fmt, exc) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise TruncatedImageError(f"corrupt {fmt}: zero-sized image {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLargeError(f"image too large: {w}x{h} = {w * h} pixels > limit {max_pixels}")
    if fmt == "TIFF" and int(getattr(im, "tag_v2", {}).get(_TIFF_NEW_SUBFILE_TYPE, 0) or 0) & 1:
        # Camera raw files (NEF, CR2, ARW) are TIFF-based and start with a small preview page: not the photo.
        raise UnsupportedImageError(f"unsupported TIFF: its first page is a {w}x{h} reduced-resolution preview "
                                    "(a camera raw file?)")
    return im, fmt


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an accepted image says: its sniffed format and stored size (before EXIF orientation)."""

    format: str
    width: int
    height: int


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Check that ``data`` is an image :func:`decode_image` accepts, from the header only (no pixel is decoded): the
    same sniffing, plugin restriction and pixel budget, with the same typed errors. A file truncated after its
    header passes here and fails at decode."""
    im, fmt = _open(data, max_pixels)
    try:
        return ImageInfo(fmt, im.size[0], im.size[1])
    finally:
        im.close()


def _first_clause(exc: BaseException) -> str:
    return " ".join(str(exc).split(",")[0].split())[:160]


def _load_error(fmt: str, exc: BaseException) -> ImageDecodeError:
    msg = " ".join(str(exc).split())[:160]
    if "Decompressed Data Too Large" in msg or "too much memory" in msg.lower():
        return ImageTooLargeError(f"image too large: {fmt} {msg}")
    if isinstance(exc, ValueError) and "mode" in msg.lower():
        return UnsupportedImageError(f"unsupported {fmt} variant: {msg}")
    return TruncatedImageError(f"truncated or corrupt {fmt}: {msg or type(exc).__name__}")


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in (1, 2, 3, 4, 5, 6, 7, 8) else 1
    except Exception:  # corrupt EXIF: keep the pixels as stored
        return 1


def _load(data: bytes, max_pixels: int, draft_size: tuple[int, int] | None) -> Image.Image:
    """Open, check, decode and orient. The returned image is fully loaded."""
    im, fmt = _open(data, max_pixels)
    orientation = _orientation(im)
    if draft_size is not None and fmt == "JPEG":
        dh, dw = draft_size
        if orientation in (5, 6, 7, 8):  # rotated 90°: the stored frame is transposed
            dh, dw = dw, dh
        try:
            im.draft(im.mode if im.mode in ("RGB", "L", "CMYK") else None, (max(1, dw), max(1, dh)))
        except Exception:  # draft is an optimisation only
            pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large: {_first_clause(exc)}") from None
    except MemoryError:
        raise ImageTooLargeError(f"image too large: out of memory decoding {im.size[0]}x{im.size[1]}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as exc:
        raise _load_error(fmt, exc) from None
    # Read again after loading: Pillow's TIFF plugin applies the orientation itself while loading and then drops the
    # tag, so the TIFF comes back upright with orientation 1 (applying the tag read before would rotate it twice).
    orientation = _orientation(im)
    if orientation != 1:
        method = {
            2: Image.Transpose.FLIP_LEFT_RIGHT,
            3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90,
        }[orientation]
        info = im.info
        im = im.transpose(method)
        im.info = info  # keep transparency etc.
    return im


def _to_uint8_from_16(arr: np.ndarray) -> np.ndarray:
    a = np.clip(arr.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _has_transparency(im: Image.Image) -> bool:
    return "transparency" in im.info


def _image_to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode in ("L", "1") and not _has_transparency(im):
        gray = np.array(im.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode.startswith("I;16") or mode == "I":
        gray = _to_uint8_from_16(np.asarray(im))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        arr = np.nan_to_num(arr, nan=0.0)
        scale = 255.0 if float(arr.max(initial=0.0)) <= 1.0 else 1.0
        gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    alpha_modes = ("LA", "La", "PA", "RGBA", "RGBa")
    if mode in alpha_modes or _has_transparency(im):
        try:
            rgba = np.array(im.convert("RGBA"), dtype=np.uint8)
        except ValueError as exc:
            raise UnsupportedImageError(f"unsupported pixel mode {mode}: {exc}") from None
        return _composite_on_white(rgba)
    try:
        return np.array(im.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise UnsupportedImageError(f"unsupported pixel mode {mode}: {exc}") from None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode JPEG/PNG/WebP/TIFF/AVIF (HEIC with pillow_heif) bytes to an upright ``uint8 H×W×3`` RGB array (see
    the module docstring).

    Args:
        data: the encoded bytes (untrusted).
        max_pixels: header-checked pixel budget; larger images raise :class:`ImageTooLargeError` undecoded.
        draft_size: optional ``(height, width)`` the caller will resize to; a JPEG is then decoded with DCT scaling
            at the smallest 1/2, 1/4 or 1/8 scale that stays at least that large (much faster for big photos). The
            returned size is then smaller than the stored one.

    Raises:
        EmptyImageError, TruncatedImageError, NotAnImageError, ImageTooLargeError, UnsupportedImageError
        (all :class:`ImageDecodeError`, with a one-line ``reason``).
    """
    im = _load(data, max_pixels, draft_size)
    try:
        rgb = _image_to_rgb(im)
    finally:
        im.close()
    if rgb.ndim != 3 or rgb.shape[2] != 3:  # pragma: no cover - defensive
        raise UnsupportedImageError(f"unexpected decoded shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def decode_mask(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a mask image to ``float32 H×W`` in [0, 1] (same checks, errors and EXIF handling as
    :func:`decode_image`).

    Bilevel → {0, 1}; 8-bit gray → /255; 16-bit gray → /65535; colour → luminance (ITU-R 601-2) /255. With an alpha
    channel the mask is luminance × alpha, i.e. composited on **black**: transparent means background.
    """
    im = _load(data, max_pixels, None)
    try:
        mode = im.mode
        if mode == "1":
            out = np.array(im, dtype=bool).astype(np.float32)
        elif mode.startswith("I;16") or mode == "I":
            out = np.clip(np.asarray(im).astype(np.float32), 0, 65535) / 65535.0
        elif mode == "F":
            out = np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32)), 0.0, 1.0)
        elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or _has_transparency(im):
            try:
                la = np.asarray(im.convert("RGBA").convert("LA"), dtype=np.float32)
            except ValueError as exc:
                raise UnsupportedImageError(f"unsupported mask pixel mode {mode}: {exc}") from None
            out = la[..., 0] * la[..., 1] / (255.0 * 255.0)
        else:
            try:
                out = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            except ValueError as exc:
                raise UnsupportedImageError(f"unsupported mask pixel mode {mode}: {exc}") from None
    finally:
        im.close()
    return np.ascontiguousarray(out, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Resizing


@dataclass(frozen=True)
class FitGeometry:
    """Where a ``src_height×src_width`` image lands on a ``height×width`` canvas under the fit policy."""

    src_height: int
    src_width: int
    height: int
    width: int
    new_height: int
    new_width: int
    top: int
    left: int

    @property
    def scale_y(self) -> float:
        return self.new_height / self.src_height

    @property
    def scale_x(self) -> float:
        return self.new_width / self.src_width

    @property
    def padded(self) -> bool:
        return (self.new_height, self.new_width) != (self.height, self.width)

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """Map pixel coordinates ``(..., 2)`` as ``(x, y)`` from the source image onto the canvas (pixel centres)."""
        pts = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(pts)
        out[..., 0] = (pts[..., 0] + 0.5) * self.scale_x - 0.5 + self.left
        out[..., 1] = (pts[..., 1] + 0.5) * self.scale_y - 0.5 + self.top
        return out


def fit_geometry(src_height: int, src_width: int, height: int, width: int) -> FitGeometry:
    """The aspect-preserving fit of a ``src_height×src_width`` image into ``height×width`` (centred)."""
    if min(src_height, src_width) < 1:
        raise ValueError(f"source size must be positive, got {src_height}x{src_width}")
    if min(height, width) < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    scale = min(height / src_height, width / src_width)
    nh = min(height, max(1, int(round(src_height * scale))))
    nw = min(width, max(1, int(round(src_width * scale))))
    return FitGeometry(src_height, src_width, height, width, nh, nw, (height - nh) // 2, (width - nw) // 2)


def _check_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 H×W×3 image, got {img.dtype} {img.shape}")
    return img


def fit_image(img: np.ndarray, height: int, width: int, *, fill: tuple[int, int, int] = (255, 255, 255)
              ) -> np.ndarray:
    """Resize ``img`` (uint8 H×W×3) into ``height×width``: aspect preserved, centred, padded with ``fill``."""
    img = _check_image(img)
    if len(fill) != 3 or not all(0 <= int(c) <= 255 for c in fill):
        raise ValueError(f"fill must be three values in 0..255, got {fill!r}")
    g = fit_geometry(img.shape[0], img.shape[1], height, width)
    if (g.new_height, g.new_width) == img.shape[:2]:
        resized = img
    else:
        down = g.new_height < img.shape[0] or g.new_width < img.shape[1]
        pil = Image.fromarray(np.ascontiguousarray(img), "RGB")
        if down:
            pil = pil.resize((g.new_width, g.new_height), Image.Resampling.LANCZOS, reducing_gap=3.0)
        else:
            pil = pil.resize((g.new_width, g.new_height), Image.Resampling.BICUBIC)
        resized = np.asarray(pil, dtype=np.uint8)
    if not g.padded:
        return np.array(resized, dtype=np.uint8, copy=True)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[...] = np.asarray(fill, dtype=np.uint8)
    out[g.top : g.top + g.new_height, g.left : g.left + g.new_width] = resized
    return out


def _mask_to_float(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"expected an H×W mask, got shape {m.shape}")
    if m.dtype == bool:
        return m.astype(np.float32)
    if m.dtype == np.uint8:
        return m.astype(np.float32) / 255.0
    if np.issubdtype(m.dtype, np.floating):
        return np.clip(np.nan_to_num(m.astype(np.float32)), 0.0, 1.0)
    raise ValueError(f"mask dtype must be bool, uint8 or float, got {m.dtype}")


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a mask with exactly :func:`fit_image`'s geometry; returns ``float32 height×width`` in [0, 1], padded
    with 0. Accepts bool, uint8 (0..255) or float masks."""
    m = _mask_to_float(mask)
    g = fit_geometry(m.shape[0], m.shape[1], height, width)
    resized = m if (g.new_height, g.new_width) == m.shape else _resize_mask(m, g.new_height, g.new_width)
    out = np.zeros((height, width), dtype=np.float32)
    out[g.top : g.top + g.new_height, g.left : g.left + g.new_width] = resized
    return out


#: Relative aspect-ratio difference up to which a mask of another resolution is resized to its image (1 %: the
#: rounding of a downscaled export, e.g. a 1000×750 photo with a 333×250 mask, is well inside it).
MASK_ASPECT_TOLERANCE = 0.01


def match_mask_size(mask: np.ndarray, height: int, width: int, *, tolerance: float = MASK_ASPECT_TOLERANCE
                    ) -> np.ndarray:
    """A mask made to cover a ``height×width`` image: returned as ``float32`` unchanged when the sizes match, resized
    (box down, bilinear up, like :func:`fit_mask`) when only the resolution differs — aspect ratios within
    ``tolerance`` (relative) — else ``ValueError`` naming both sizes (a mask of another framing would misplace the
    garment)."""
    m = _mask_to_float(mask)
    mh, mw = m.shape
    if (mh, mw) == (height, width):
        return m
    image_aspect, mask_aspect = width / height, mw / mh
    if abs(mask_aspect - image_aspect) > tolerance * image_aspect:
        raise ValueError(f"mask is {mw}x{mh} but the image is {width}x{height} (aspect ratios {mask_aspect:.3f} and "
                         f"{image_aspect:.3f} differ by more than {tolerance:.0%})")
    return _resize_mask(m, height, width)


def _resize_mask(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 mask resized to ``height×width``: box averaging down, bilinear up (no Lanczos overshoot), in [0, 1]."""
    down = height < m.shape[0] or width < m.shape[1]
    pil = Image.fromarray(np.ascontiguousarray(m), "F")
    pil = pil.resize((width, height), Image.Resampling.BOX if down else Image.Resampling.BILINEAR)
    return np.clip(np.asarray(pil, dtype=np.float32), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Encoding


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a uint8 H×W×3 RGB image (baseline, 4:2:0 below quality 90, 4:4:4 from 90)."""
    img = _check_image(img)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), "RGB").save(
        buf, "JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2
    )
    return buf.getvalue()


def encode_png(img: np.ndarray, *, compress_level: int = 6) -> bytes:
    """PNG bytes of a uint8 H×W×3 (RGB) or H×W (gray) image, or a bool H×W mask (stored as 0/255)."""
    a = np.asarray(img)
    if a.dtype == bool and a.ndim == 2:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"expected uint8 H×W, H×W×3 or H×W×4 (or bool H×W), got {a.dtype} {a.shape}")
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a), mode).save(buf, "PNG", compress_level=int(compress_level))
    return buf.getvalue()


def encode_webp(img: np.ndarray, quality: int = 90, *, lossless: bool = False) -> bytes:
    """WebP bytes of a uint8 H×W×3 RGB image (lossy at ``quality``, or lossless). ``method=2`` (of libwebp's 0-6
    effort levels): Pillow's default 4 took seconds on detailed 1024×768 images here, for a few % smaller files."""
    img = _check_image(img)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), "RGB").save(buf, "WEBP", quality=int(quality), lossless=lossless,
                                                           method=2)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------------
# Model tensors (numpy, channels first; torch.from_numpy() them without a copy)


def to_model_tensor(img: np.ndarray) -> np.ndarray:
    """uint8 ``H×W×3`` (or ``B×H×W×3``) → float32 ``3×H×W`` (or ``B×3×H×W``) in [-1, 1]: ``x/127.5 - 1``."""
    a = np.asarray(img)
    if a.dtype != np.uint8 or a.ndim not in (3, 4) or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 H×W×3 or B×H×W×3, got {a.dtype} {a.shape}")
    out = a.astype(np.float32) * np.float32(1.0 / 127.5) - np.float32(1.0)
    return np.ascontiguousarray(np.moveaxis(out, -1, -3))


def _as_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):  # a torch tensor, without importing torch here
        return t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float32)


def from_model_tensor(t) -> np.ndarray:
    """float ``3×H×W`` (or ``B×3×H×W``) in [-1, 1] (numpy or torch) → uint8 ``H×W×3`` (or ``B×H×W×3``).
    Values are clipped; NaN becomes mid-grey (0)."""
    a = _as_numpy(t)
    if a.ndim not in (3, 4) or a.shape[-3] != 3:
        raise ValueError(f"expected 3×H×W or B×3×H×W, got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    out = np.rint((np.clip(a, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, -3, -1))


def mask_to_tensor(mask: np.ndarray) -> np.ndarray:
    """bool / uint8 / float ``H×W`` mask → float32 ``1×H×W`` in [0, 1]."""
    return _mask_to_float(mask)[None]


def mask_from_tensor(t, threshold: float | None = None) -> np.ndarray:
    """float ``1×H×W`` or ``H×W`` (numpy or torch) → float32 ``H×W`` clipped to [0, 1], or bool if ``threshold``
    is given (``> threshold``)."""
    a = _as_numpy(t)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected 1×H×W or H×W, got shape {a.shape}")
    a = np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0).astype(np.float32)
    return a > threshold if threshold is not None else a
