"""Decoding and writing medical images: JPEG, PNG (8/16-bit), DICOM.

Ingestion checks every image with ``inspect_image`` and turns DICOM into PNG once, so every
later stage only ever reads PNG/JPEG through ``load_array``.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DICOM_MAGIC_OFFSET = 128


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short countable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    sha256: str
    phash: str  # content fingerprint that survives re-encoding and resizing (leakage checks)


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return True
    with open(path, "rb") as handle:
        handle.seek(DICOM_MAGIC_OFFSET)
        return handle.read(4) == b"DICM"


def inspect_image(path: Path, max_pixels: int, min_side: int) -> ImageInfo:
    """Fully decode a PNG/JPEG to prove it is usable; raise ImageError with a reason if not."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError("missing_image", str(path)) from None
    except OSError as exc:
        raise ImageError("unreadable_image", f"{path}: {exc}") from None
    if not data:
        raise ImageError("corrupt_image", f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError("image_too_large", f"{path}: {width}x{height} exceeds {max_pixels} pixels")
                image.load()
                mode = image.mode
                phash = average_hash(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_large", f"{path}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError("corrupt_image", f"{path}: {exc}") from None
    if min(width, height) < min_side:
        raise ImageError("image_too_small", f"{path}: {width}x{height} has a side under {min_side} px")
    return ImageInfo(width, height, mode, hashlib.sha256(data).hexdigest(), phash)


def average_hash(image: Image.Image, side: int = 16) -> str:
    """Bits of "brighter than the mean" on a side x side thumbnail, as hex.

    The same picture saved as JPEG instead of PNG, or at another size, keeps (nearly) the
    same bits; float mode keeps 16-bit images from saturating.
    """
    small = np.asarray(image.convert("F").resize((side, side), Image.Resampling.BILINEAR))
    bits = (small > small.mean()).flatten()
    return np.packbits(bits).tobytes().hex()


def dicom_to_png(path: Path, out_path: Path, apply_window: bool = True, max_pixels: int | None = None) -> Path:
    """Render a DICOM's pixels to an 8-bit PNG; only pixels are written, no identifiers.

    Modality LUT, then the stored VOI window (when asked), MONOCHROME1 inverted so that
    bright means dense as in every other image, first frame of a multi-frame file.
    ``max_pixels``: larger images (by the header's Rows x Columns) are refused before any
    pixel is decoded, as Pillow does for PNG/JPEG.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    if max_pixels is not None:
        _bounded_inflate(path, max_pixels)
    try:
        dataset = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises a zoo of types for bad files
        raise ImageError("corrupt_dicom", f"{path}: {exc}") from None
    if "PixelData" not in dataset:
        raise ImageError("dicom_without_pixels", f"{path}: no PixelData element")
    rows, columns = int(getattr(dataset, "Rows", 0) or 0), int(getattr(dataset, "Columns", 0) or 0)
    if max_pixels is not None and rows * columns > max_pixels:
        raise ImageError("image_too_large", f"{path}: {columns}x{rows} exceeds {max_pixels} pixels")
    _decoder_available(path, dataset)
    try:
        pixels = pixel_array(dataset, index=0)  # the first frame only: one image is rendered
    except Exception as exc:
        raise ImageError("corrupt_dicom", f"{path}: cannot decode pixels: {exc}") from None
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(pixels, dataset).astype(np.float64)
        if apply_window and "WindowCenter" in dataset:
            values = apply_voi_lut(values, dataset).astype(np.float64)
        scaled = _unit_range(values)
        if photometric == "MONOCHROME1":
            scaled = 1.0 - scaled
        image = Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")
    else:
        rgb = pixels if photometric == "RGB" else _to_rgb(pixels, dataset)
        image = Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path, format="PNG")
    return out_path


DEFLATED = "1.2.840.10008.1.2.1.99"
# A deflated data set may inflate to at most this many bytes a pixel allowed (3 samples of 16
# bits), plus room for its header elements.
INFLATE_BYTES_PER_PIXEL = 6
INFLATE_HEADER_BYTES = 1 << 20


def _bounded_inflate(path: Path, max_pixels: int) -> None:
    """Refuse a deflated DICOM that inflates past what ``max_pixels`` allows, before pydicom
    inflates it whole (a few KB can declare gigabytes)."""
    from pydicom.filereader import read_file_meta_info

    try:
        if str(read_file_meta_info(path).get("TransferSyntaxUID", "")) != DEFLATED:
            return
        data = path.read_bytes()
    except Exception:  # noqa: BLE001 - not a readable meta header: dcmread reports it
        return
    # The file meta group (explicit VR little endian) ends at 132 + 12 + its group length.
    start = (
        DICOM_MAGIC_OFFSET + 4 + 12 + int.from_bytes(data[DICOM_MAGIC_OFFSET + 12 : DICOM_MAGIC_OFFSET + 16], "little")
    )
    limit = max_pixels * INFLATE_BYTES_PER_PIXEL + INFLATE_HEADER_BYTES
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[start:], limit)
    except zlib.error as exc:
        raise ImageError("corrupt_dicom", f"{path}: deflated data set: {exc}") from None
    if inflater.unconsumed_tail:
        raise ImageError("image_too_large", f"{path}: deflated data set inflates past {limit} bytes")


def _decoder_available(path: Path, dataset) -> None:
    """A compressed transfer syntax this machine cannot decode is named as such, not 'corrupt'."""
    from pydicom.pixels.decoders.base import get_decoder

    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise ImageError("unsupported_dicom_compression", f"{path}: no decoder installed for {syntax.name} ({syntax})")


def _unit_range(values: np.ndarray) -> np.ndarray:
    """Values scaled by their own min..max into [0, 1] (all zeros when flat or not finite)."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if not high > low:
        return np.zeros(values.shape, dtype=np.float64)
    return np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0)


# Modes with more than 8 bits a grey value: rendered to 8 bits once, at ingest (``to_8bit``).
WIDE_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def to_8bit(path: Path, out_path: Path) -> Path:
    """A 16-bit or float grey image as an 8-bit PNG, windowed to its own min..max - the way a
    DICOM is rendered - so every consumer (noise, training's convert('RGB'), evaluation) sees the
    same picture rather than Pillow's clip to 255."""
    with Image.open(path) as image:
        values = np.asarray(image, dtype=np.float64)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(_unit_range(values) * 255).astype(np.uint8), mode="L").save(out_path, format="PNG")
    return out_path


def _to_rgb(pixels: np.ndarray, dataset) -> np.ndarray:
    from pydicom.pixels import convert_color_space

    return convert_color_space(pixels, str(dataset.PhotometricInterpretation), "RGB")


def load_array(path: str | Path) -> np.ndarray:
    """Pixels as stored: (H, W) uint8/uint16 grayscale or (H, W, 3) uint8 RGB.

    CMYK, palette and alpha images become RGB; 16-bit stays 16-bit so that noising can
    clip back to the image's own range.
    """
    with Image.open(path) as image:
        if image.mode in {"I;16", "I;16B", "I;16L"}:
            return np.asarray(image, dtype=np.uint16)
        if image.mode == "I":
            return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        if image.mode == "L":
            return np.asarray(image, dtype=np.uint8)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def readable_array(path: str | Path) -> np.ndarray | None:
    """``load_array``, or None where the file cannot be read as an image (its samples fail, the stage goes on)."""
    try:
        return load_array(path)
    except (OSError, ValueError, SyntaxError):
        return None


def save_array(pixels: np.ndarray, path: str | Path) -> Path:
    """PNG of an array from ``load_array`` (same dtype and channels back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.dtype == np.uint16:
        image = Image.fromarray(pixels)  # Pillow 13 picks I;16 itself and rejects it as an explicit mode
    else:
        image = Image.fromarray(pixels.astype(np.uint8))
    image.save(path, format="PNG")
    return path


def inpaint(pixels: np.ndarray, mask: np.ndarray, grow: int = 1) -> np.ndarray:
    """``pixels`` with the region under ``mask`` filled in from its surroundings: a finding
    removed from an image (a lesion inside its box), for a counterfactual whose right answer
    flips. Biharmonic inpainting (scikit-image): the fill continues the intensities and
    gradients at the region's border smoothly, so no edge is left where the region was.

    ``mask``: the image's height x width, true where pixels are replaced; grown by ``grow``
    pixels first, so a soft-edged finding leaves no rim. Grey and colour images, any integer or
    float dtype (returned in the input's dtype, rounded and clipped for integers).
    """
    from scipy import ndimage
    from skimage.restoration import inpaint_biharmonic

    region = np.asarray(mask, dtype=bool)
    if region.shape != pixels.shape[:2]:
        raise ValueError(f"mask {region.shape} does not match the image {pixels.shape[:2]}")
    if grow > 0:
        region = ndimage.binary_dilation(region, iterations=grow)
    if region.all():
        raise ValueError("inpaint: the mask covers the whole image; nothing to fill it from")
    if not region.any():
        return pixels.copy()
    values = pixels.astype(np.float64)
    filled = inpaint_biharmonic(values, region, channel_axis=2 if pixels.ndim == 3 else None)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        return np.clip(np.round(filled), info.min, info.max).astype(pixels.dtype)
    return filled.astype(pixels.dtype)
