"""Reading one image file from the wild into the RGB uint8 array every pipeline here expects.

Uploads and folders hold grayscale, palette, RGBA, 16-bit, CMYK and animated files, rotated phone photos,
40-megapixel JPEGs and files that are not images at all. `read_image` turns each into an RGB uint8 array
(or one PSLError that says what is wrong), with a size limit and reduced-size decoding of large photos.
"""

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from psl_keras.errors import PSLError

MAX_FILE_BYTES = 20 * 1024 * 1024  # uploads
MAX_TRAINING_FILE_BYTES = 512 * 1024 * 1024  # files of a training folder (large TIFFs)
MAX_PIXELS = 100_000_000  # refused above this (decompression bombs); larger than any camera image
DECODE_SIDE = 1024  # large images are decoded and kept at about this shorter side


def to_rgb(image):
    """A PIL image of any mode -> RGB uint8 array; transparency is composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: scale the range to 8 bits
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        grey = np.round((values - low) * scale).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def as_rgb_uint8(array):
    """Any image array -> RGB uint8 [..., H, W, 3] (a batch keeps its leading axes).

    [H, W] or one channel: grey, repeated; 4 channels: RGBA composited over white; uint16: the top 8 bits;
    bool: 0/255; float: [0, 1] when no finite value exceeds 1, else [0, 255] (both conventions are common),
    clipped and rounded, NaN as 0; other integers clipped to [0, 255].
    """
    array = np.asarray(array)
    if array.ndim < 2:
        raise PSLError(f"An image needs at least 2 dimensions (H, W); got shape {array.shape}.")
    if array.ndim == 2 or array.shape[-1] not in (1, 3, 4):
        array = array[..., None]  # [H, W] grey (also [N, H, W] batches with W not 1, 3 or 4)
    if array.dtype == np.bool_:
        values = array.astype(np.float64) * 255.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        top = 255.0 if finite.size and finite.max() > 1.0 else 1.0
        values = np.clip(np.nan_to_num(values, nan=0.0, posinf=top, neginf=0.0), 0.0, top) * (255.0 / top)
    elif array.dtype == np.uint16:
        values = array.astype(np.float64) / 257.0
    elif array.dtype == np.uint8:
        values = array
    else:
        values = np.clip(array.astype(np.float64), 0, 255)
    channels = values.shape[-1]
    if channels == 1:
        values = np.repeat(values, 3, axis=-1)
    elif channels == 4:
        alpha = values[..., 3:4].astype(np.float64) / 255.0
        values = values[..., :3] * alpha + 255.0 * (1.0 - alpha)
    if values.dtype != np.uint8:
        values = np.round(values).astype(np.uint8)
    return values


def read_image(path_or_bytes, max_bytes=MAX_FILE_BYTES, max_pixels=MAX_PIXELS, decode_side=DECODE_SIDE):
    """RGB uint8 array [H, W, 3] of an image file (a path or the file's bytes).

    The first frame of an animation; EXIF orientation applied; photos larger than `decode_side` on their
    shorter side are decoded at reduced size (JPEG draft mode) and shrunk to it. Raises PSLError for an
    empty, oversized, truncated or unreadable file.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        data, name = bytes(path_or_bytes), "the image"
    else:
        name = os.path.basename(str(path_or_bytes))
        try:
            size = os.path.getsize(path_or_bytes)
            if size > max_bytes:
                raise PSLError(f"{name} is {size / 2**20:.1f} MB; images up to {max_bytes / 2**20:.0f} MB are read.")
            with open(path_or_bytes, "rb") as f:
                data = f.read()
        except OSError as err:
            raise PSLError(f"Cannot read {name} ({err.strerror or err}).") from None
    if not data:
        raise PSLError(f"{name} is empty (0 bytes): not an image.")
    if len(data) > max_bytes:
        raise PSLError(f"{name} is {len(data) / 2**20:.1f} MB; images up to {max_bytes / 2**20:.0f} MB are read.")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise PSLError(f"{name} is not an image that can be read (supported: JPEG, PNG, GIF, BMP, WebP, TIFF, "
                       f"...).") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise PSLError(f"{name} is damaged or truncated and cannot be decoded ({err}).") from None
    width, height = image.size
    if width * height > max_pixels:
        raise PSLError(f"{name} is {width}x{height} pixels; at most {max_pixels // 1_000_000} megapixels are read.")
    if width < 1 or height < 1:
        raise PSLError(f"{name} has no pixels ({width}x{height}).")
    try:
        image.seek(0)  # animated GIF/WebP/PNG: the first frame
        if image.format == "JPEG" and min(width, height) > 2 * decode_side:
            # Decode at 1/2, 1/4 or 1/8 scale directly: a 6000x4000 photo never exists at full size.
            scale = min(width, height) / decode_side
            image.draft("RGB", (int(width / scale), int(height / scale)))
        image.load()
        image = ImageOps.exif_transpose(image)
        if min(image.size) > decode_side:
            ratio = decode_side / min(image.size)
            image = image.resize((max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio))),
                                 Image.BILINEAR, reducing_gap=2.0)
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise PSLError(f"{name} is damaged or truncated and cannot be decoded ({err}).") from None


def fit_square(image, side):
    """Shorter side resized to `side` (any image, 1x1 included), then the centre `side` x `side` square."""
    height, width = image.shape[:2]
    ratio = side / min(height, width)
    size = (max(side, round(width * ratio)), max(side, round(height * ratio)))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, reducing_gap=3.0))
    top, left = (resized.shape[0] - side) // 2, (resized.shape[1] - side) // 2
    return resized[top:top + side, left:left + side]
