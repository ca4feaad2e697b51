"""Image and label file I/O with clear errors (Pillow underneath; OpenCV encodes RGB PNGs)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ddrnet.assets import assets_dir
from ddrnet.atomic import atomic_write
from ddrnet.errors import DDRNetError
from ddrnet.limits import DEFAULT_MAX_PIXELS, check_pixels

# What counts as an image file wherever files are picked from a folder or a pattern (inputs
# of ``ddrnet predict``, calibration folders, folder data sets, demo frames): formats Pillow
# reads.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# Refuse decompression bombs: ~ 16k x 16k pixels is far beyond any road-scene frame.
Image.MAX_IMAGE_PIXELS = 268_435_456

# zlib level of label-map PNGs: maps of a few flat regions, small at any level.
LABEL_PNG_LEVEL = 1


def image_files(folder: str | Path) -> list[Path]:
    """The image files (``IMAGE_SUFFIXES``, any case) directly in ``folder``, sorted by name."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )


def demo_frames(folder: Path | None = None) -> list[Path]:
    """The images in ``folder`` (``image_files``; none when the folder does not exist), by
    default the demo road scenes shipped with the package (``assets/demo``: CamVid, CC
    BY-NC 4.0; see its README.md)."""
    folder = assets_dir() / "demo" if folder is None else Path(folder)
    return image_files(folder) if folder.is_dir() else []


class ImageReadError(DDRNetError, ValueError):
    """An image or label file cannot be used; the message names the file."""


# EXIF's Orientation tag, and its values that swap width and height (a quarter turn).
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)


def upright(image: Image.Image) -> Image.Image:
    """``image`` as viewers and labelling tools (LabelMe, CVAT) show it: turned as its EXIF
    Orientation says (a phone's or camera's portrait JPEG is stored sideways), else itself."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of ``upright(image)``, from the header alone: a PNG's EXIF is
    read only where it precedes the pixels (where Pillow writes it; Pillow would decode the
    whole image to look for it after them)."""
    width, height = image.size
    if image.format == "PNG" and "exif" not in image.info:
        return width, height
    turned = image.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS
    return (height, width) if turned else (width, height)


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from None
    if image.width == 0 or image.height == 0:
        raise ImageReadError(f"{path}: image has zero size")
    return upright(image)


def to_rgb_array(image: Image.Image, source: str = "<image>") -> np.ndarray:
    """Convert any Pillow image to ``(H, W, 3)`` uint8 RGB.

    Documented conversions: greyscale is repeated to three channels, alpha is dropped,
    palette images are expanded, and 16-bit or float images are rescaled from their own
    min..max range to 0..255 (the usual way to view such data); a float image's NaN and
    infinite pixels (a depth or thermal camera's "no reading") are left out of that range and
    drawn black, and one without a finite pixel is an ``ImageReadError``.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(array)
        if not finite.any():
            raise ImageReadError(f"{source}: no pixel holds a finite value (all NaN or infinite)")
        low, high = float(array[finite].min()), float(array[finite].max())
        scale = 255.0 / (high - low) if high > low else 0.0
        grey = np.where(finite, (array - low) * scale, 0.0).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    try:
        return np.array(image.convert("RGB"))  # a writable copy (torch warns on read-only)
    except (ValueError, OSError) as error:
        raise ImageReadError(
            f"{source}: cannot convert mode {image.mode} to RGB ({error})"
        ) from None


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (see ``to_rgb_array`` for conversions)."""
    return to_rgb_array(_open(path), str(path))


def read_rgb_within(
    path: str | Path,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    largest_scale: float = 1.0,
    hint: str | None = None,
) -> np.ndarray:
    """``read_rgb`` of an image whose header says it has at most ``max_pixels`` pixels at
    ``largest_scale`` (``InputTooLargeError`` naming it otherwise, before its pixels are
    decoded: a small PNG can hold gigabytes of them; ``hint`` says how to raise the cap);
    ``max_pixels=None``: no cap."""
    if max_pixels is not None:
        width, height = image_size(path)
        how = {"hint": hint} if hint is not None else {}
        check_pixels(str(path), width, height, max_pixels, largest_scale, **how)
    return read_rgb(path)


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label image as ``(H, W)`` uint8/int32 class indices.

    Palette ('P') PNGs give their indices, not colours. A colour label image is an error
    here: colour-coded labels go through a data set's colour-to-class table instead.
    """
    image = _open(path)
    indices = _index_array(image)
    if indices is None:
        raise ImageReadError(
            f"{path}: label images must be single-channel class indices, got mode {image.mode}"
        )
    return indices


def _index_array(image: Image.Image) -> np.ndarray | None:
    """The stored values of a single-channel image, ``(H, W)``; None for colour images."""
    if image.mode in ("L", "P"):
        return np.array(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        return np.asarray(image).astype(np.int32)
    return None


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label image of either kind: ``(H, W)`` class indices for single-channel images
    (L, P with its indices, 16/32-bit), ``(H, W, 3)`` uint8 RGB for colour ones (alpha dropped).
    """
    image = _open(path)
    indices = _index_array(image)
    return np.asarray(image.convert("RGB")) if indices is None else indices


def read_palette_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``read_mask``'s array, and for a palette (mode P) image its palette as ``(256, 3)``
    uint8 RGB rows (None for other images): whether a palette PNG stores class ids or
    colours, only the data set's colour table can tell."""
    image = _open(path)
    indices = _index_array(image)
    if indices is None:
        return np.asarray(image.convert("RGB")), None
    if image.mode != "P":
        return indices, None
    flat = np.array(image.getpalette("RGB") or [], dtype=np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(flat) // 3] = flat[: len(flat) // 3 * 3].reshape(-1, 3)
    return indices, palette


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image file as it is read (``upright``), from its header
    without decoding pixels."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return upright_size(image)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from None


def read_color_label(path: str | Path) -> np.ndarray:
    """Read a colour-coded label image as ``(H, W, 3)`` uint8 RGB."""
    image = _open(path)
    return np.asarray(image.convert("RGB"))


def png_bytes(array: np.ndarray, palette: Sequence[Sequence[int]] | None = None) -> bytes:
    """``(H, W)`` indices (an indexed PNG when a palette is given and they are uint8: a PNG
    palette holds 256 colours; wider ids as a 16-bit grey PNG) or ``(H, W, 3)`` uint8 RGB,
    encoded as PNG.

    RGB pictures (overlays of photographs, which compress little whatever the effort) are
    encoded by OpenCV at zlib level 1 with run-length matching and the "sub" row filter: ten
    times faster than Pillow's default level 6, files a fifth larger on CamVid overlays.
    Index maps go through Pillow, which writes palettes."""
    if array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8:
        import cv2

        settings = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        settings += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10: one cheap row filter
            settings += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB]
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), settings)
        if not ok:  # OpenCV gives no reason; no well-formed picture gets here
            raise RuntimeError(f"OpenCV could not encode a {array.shape} picture as PNG")
        return encoded.tobytes()
    if array.ndim == 2 and array.dtype != np.uint8:
        # Ids of more than 256 classes: a 16-bit grey PNG (Pillow writes no 32-bit one).
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > np.iinfo(np.uint16).max:
            raise ValueError(f"class ids must lie in 0..65535 for a PNG, got {low}..{high}")
        array = array.astype(np.uint16)
    image = Image.fromarray(array)
    if palette is not None and array.ndim == 2 and array.dtype == np.uint8:
        # putpalette turns an 'L' image into 'P' while keeping the index values.
        flat = [int(channel) for colour in palette for channel in colour][:768]
        image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=LABEL_PNG_LEVEL)
    return buffer.getvalue()


def write_png(
    path: str | Path, array: np.ndarray, palette: Sequence[Sequence[int]] | None = None
) -> None:
    """``png_bytes(array, palette)`` written to ``path`` whole or not at all
    (``ddrnet.atomic``: a kill never leaves half an earlier result)."""
    data = png_bytes(array, palette)
    atomic_write(Path(path), lambda stream: stream.write(data))
