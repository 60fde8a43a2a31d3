"""Read one mammogram (DICOM or an ordinary image file) as a 2-D float32 array, bright = dense.

DICOMs go through pydicom 3 with the pylibjpeg/pyjpegls codecs (uncompressed, RLE, JPEG 2000,
JPEG Lossless, JPEG-LS). The display pipeline follows the DICOM standard (PS3.3 C.11) as the
VinDr-Mammo visualiser does: Modality LUT (rescale or LUT), then the first VOI LUT or window,
then MONOCHROME1 is inverted so that every result reads like MONOCHROME2, and pixels equal to
``PixelPaddingValue`` are set to the darkest value. PNG/JPEG/PGM/TIFF go through Pillow.

Every failure is an :class:`ImageError` naming the file and a short reason; an image that must
not be used (a "FOR PROCESSING" raw detector image) raises :class:`SkipImage`.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

DICOM_SUFFIXES: frozenset[str] = frozenset({".dcm", ".dicom"})
PILLOW_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".tif", ".tiff"})
#: ITU-R BT.601 luma weights, the ones Pillow's ``convert("L")`` uses.
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)


class ImageError(Exception):
    """An image could not be read or preprocessed; ``reason`` is short and human-readable."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SkipImage(ImageError):  # noqa: N818  (a skip, not an error; name used by callers)
    """An image that is readable but must not be used (e.g. "FOR PROCESSING")."""


def is_dicom(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm``/``.dicom`` name or the ``DICM`` preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a 2-D float32 array in MONOCHROME2 orientation (bright = dense).

    Parameters
    ----------
    path : str or Path
        A DICOM (``.dcm``, ``.dicom`` or any file with the ``DICM`` preamble) or a
        PNG/JPEG/PGM/TIFF file. Colour images are converted to gray with BT.601 luma.

    Returns
    -------
    numpy.ndarray
        Shape ``(rows, columns)``, dtype float32.

    Raises
    ------
    SkipImage
        For a DICOM whose PresentationIntentType is "FOR PROCESSING".
    ImageError
        For a missing, truncated or unreadable file, an unsupported transfer syntax, or a
        file that is not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    if is_dicom(path):
        return read_dicom(path)
    return read_pillow(path)


def read_pillow(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG/PGM/TIFF image with Pillow as a 2-D float32 gray array."""
    try:
        with Image.open(path) as im:
            im.load()
            arr = _pillow_gray(im)
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError(path, f"not an image ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(path, f"unreadable image: {_short(exc)}") from exc
    return arr


def _pillow_gray(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.float32)
    # RGB, RGBA, P, CMYK, 1, ...: Pillow's own conversion is the documented BT.601 luma
    return np.asarray(im.convert("L"), dtype=np.float32)


def read_dicom(path: str | Path) -> np.ndarray:
    """Read a DICOM mammogram through the display pipeline; see :func:`read_image`."""
    ds = _dcmread(path)
    if str(ds.get("PresentationIntentType", "")).strip().upper() == "FOR PROCESSING":
        raise SkipImage(path, "FOR PROCESSING")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":  # indices into a colour table, not intensities
        raise ImageError(path, "PALETTE COLOR images are not supported; expected a grayscale mammogram")
    raw = _decode(ds, path)
    padding = _padding_mask(ds, raw)
    try:
        arr = apply_modality_lut(raw, ds)
        arr = apply_voi_lut(arr, ds, index=0)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ImageError(path, f"invalid LUT/window attributes: {_short(exc)}") from exc
    arr = np.asarray(arr, dtype=np.float32)  # integers up to 2**24 stay exact; halves the memory traffic
    if padding is not None and padding.all():
        raise ImageError(path, "every pixel is PixelPaddingValue")
    valid = arr[~padding] if padding is not None else arr
    low, high = float(valid.min()), float(valid.max())
    if photometric == "MONOCHROME1":
        # reflect within the image's own range, so that min and max swap places
        arr = high + low - arr
    if padding is not None:
        arr[padding] = low  # padding is background, i.e. the darkest value after inversion
    return arr


def _dcmread(path: str | Path) -> pydicom.Dataset:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # odd-but-readable headers are common; keep them quiet
            ds = pydicom.dcmread(path, force=Path(path).suffix.lower() in DICOM_SUFFIXES)
    except InvalidDicomError as exc:
        raise ImageError(path, "not a DICOM file") from exc
    except (EOFError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise ImageError(path, f"unreadable or truncated DICOM: {_short(exc)}") from exc
    if "PixelData" not in ds:
        # pydicom drops what it cannot finish reading, warning "End of file reached ..."
        cut_short = len(ds) == 0 or any("end of file" in str(w.message).lower() for w in caught)
        raise ImageError(path, "truncated DICOM: no complete pixel data" if cut_short
                         else "not an image: the DICOM has no PixelData")
    return ds


def _decode(ds: pydicom.Dataset, path: str | Path) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
    name = getattr(syntax, "name", str(syntax))
    try:
        raw = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise ImageError(path, f"cannot decode transfer syntax {syntax} ({name}): {_short(exc)}") from exc
    except Exception as exc:  # noqa: BLE001  (codecs raise anything on corrupt streams)
        raise ImageError(path, f"corrupt or truncated pixel data ({name}): {_short(exc)}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(path, f"multi-frame image ({frames} frames); expected one 2-D mammogram")
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):
        # pydicom 3 returns RGB for RGB and YBR data; luma gives the gray level
        raw = raw[..., :3].astype(np.float64) @ np.asarray(LUMA)
    if raw.ndim != 2:
        raise ImageError(path, f"pixel data of shape {raw.shape}; expected a 2-D image")
    return raw


def _padding_mask(ds: pydicom.Dataset, raw: np.ndarray) -> np.ndarray | None:
    if "PixelPaddingValue" not in ds or raw.dtype.kind not in "iu":
        return None
    value = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return raw == value
    low, high = sorted((value, int(limit)))
    return (raw >= low) & (raw <= high)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
