"""Image folders from the wild: every readable file, the unreadable ones found once and named, all read as RGB.

A folder holds truncated JPEGs, empty files, text files named .jpg, CMYK, 16-bit, palette and animated images,
40-megapixel photos and 1-pixel icons. `scan` decodes each file once (in threads; the result is cached by the
files' names, sizes and modification times) and returns the ones that cannot be read, with the reason, so
training can leave them out before it counts its steps. Reading goes through `psl_keras.data.images.read_image`
(the demo's reader too): RGB uint8, first frame, EXIF orientation, large JPEGs decoded at reduced size, a
pixel limit against decompression bombs; images smaller than the training crop are upscaled.
"""

import concurrent.futures
import hashlib
import json
import os

import numpy as np

from psl_keras.data import images as images_lib
from psl_keras.errors import PSLError

# Every format TensorFlow's decode_image reads (JPEG, PNG, GIF, BMP, WebP) and TIFF, which Pillow reads.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ON_BAD_IMAGE = ("skip", "error")
_SCAN_VERSION = 1  # bump when what counts as readable changes, so cached scans are redone


def list_images(root):
    """Image files under `root` (by extension, any case), sorted."""
    return sorted(os.path.join(dirpath, name) for dirpath, _, names in os.walk(root) for name in names
                  if name.lower().endswith(EXTENSIONS) and not name.startswith("."))


def cache_dir():
    return os.path.join(os.environ.get("PSL_KERAS_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                                        "psl_keras")), "folder_scans")


def check_file(path):
    """None if the file decodes, else why not (one line)."""
    try:
        images_lib.read_image(path, max_bytes=images_lib.MAX_TRAINING_FILE_BYTES)
        return None
    except PSLError as err:
        return str(err)


def scan(files, root, verbose=True, workers=None):
    """{relative path: reason} of the files that cannot be read. Cached: a folder is decoded once until a file
    is added, removed or changed."""
    stats = []
    for path in files:
        try:
            info = os.stat(path)
            stats.append((os.path.relpath(path, root), info.st_size, info.st_mtime_ns))
        except OSError:
            stats.append((os.path.relpath(path, root), -1, -1))
    key = hashlib.sha256(json.dumps([_SCAN_VERSION, images_lib.MAX_PIXELS, os.path.abspath(root), stats])
                         .encode()).hexdigest()[:32]
    cached = os.path.join(cache_dir(), f"{key}.json")
    try:
        with open(cached) as f:
            return json.load(f)["unreadable"]
    except (OSError, ValueError, KeyError):
        pass
    progress = None
    if verbose and len(files) >= 2000:
        import keras

        print(f"Checking {len(files)} images under {root} once (cached for later runs)")
        progress = keras.utils.Progbar(len(files))
    unreadable = {}
    # Pillow releases the GIL while decoding, so threads scale with cores.
    with concurrent.futures.ThreadPoolExecutor(workers or min(32, 2 * (os.cpu_count() or 1))) as pool:
        for i, (path, reason) in enumerate(zip(files, pool.map(check_file, files, chunksize=64))):
            if reason:
                unreadable[os.path.relpath(path, root)] = reason
            if progress and (i + 1) % 500 == 0:
                progress.update(i + 1)
    if progress:
        progress.update(len(files), finalize=True)
    try:
        from psl_keras.atomic import write_json_atomic

        os.makedirs(cache_dir(), exist_ok=True)
        write_json_atomic(cached, {"root": os.path.abspath(root), "files": len(files), "unreadable": unreadable})
    except OSError:
        pass  # a read-only home: scan again next time
    return unreadable


def read_for_training(path, min_side=0):
    """RGB uint8 [H, W, 3] of a file the scan passed; upscaled (bicubic) to a shorter side of `min_side`."""
    image = images_lib.read_image(path, max_bytes=images_lib.MAX_TRAINING_FILE_BYTES)
    height, width = image.shape[:2]
    if min_side and min(height, width) < min_side:
        from PIL import Image

        ratio = min_side / min(height, width)
        size = (max(min_side, round(width * ratio)), max(min_side, round(height * ratio)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    return image


def describe_unreadable(unreadable, root, limit=5):
    """'N of the files under ROOT cannot be read: a.jpg (why), ...'."""
    names = [f"{name} ({reason})" for name, reason in sorted(unreadable.items())[:limit]]
    more = f", and {len(unreadable) - limit} more" if len(unreadable) > limit else ""
    return f"{len(unreadable)} file(s) under {root} cannot be read: {'; '.join(names)}{more}"
