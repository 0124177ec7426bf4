"""Reading image files from the wild: every valid kind becomes RGB uint8, every bad file one clear PSLError."""

import numpy as np
import pytest

from psl_keras.errors import PSLError
from psl_keras.images import fit_square, read_image

from image_files import bad_files, odd_images


def test_every_kind_of_image_becomes_rgb_uint8(tmp_path):
    paths = odd_images(tmp_path)
    for kind, path in paths.items():
        image = read_image(str(path))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, kind
        assert image.shape[0] >= 1 and image.shape[1] >= 1, kind
    # Colour survives: CMYK and palette files are not turned grey, transparency is composited over white.
    assert np.abs(read_image(str(paths["cmyk"])).astype(int).std(axis=-1)).mean() > 5
    grey = read_image(str(paths["16-bit"]))
    assert grey.max() == 255 and grey.min() == 0 and np.array_equal(grey[..., 0], grey[..., 2])
    assert read_image(str(paths["rgba"])).min() >= 127  # half-transparent over white: brighter than the image
    huge = read_image(str(paths["6000x4000 jpeg"]))
    assert huge.shape == (1024, 1536, 3)  # decoded at reduced size, shorter side 1024, aspect kept


def test_bad_files_are_one_clear_error_each(tmp_path):
    expected = {"empty": "empty", "text": "not an image", "truncated": "damaged or truncated"}
    for kind, path in bad_files(tmp_path).items():
        with pytest.raises(PSLError, match=expected[kind]):
            read_image(str(path))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 2048)
    with pytest.raises(PSLError, match="images up to"):
        read_image(str(big), max_bytes=1024)


def test_fit_square_brings_any_shape_to_the_square():
    for shape in ((1, 1, 3), (3, 500, 3), (500, 3, 3), (40, 48, 3)):
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        out = fit_square(image, 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    constant = np.full((1, 1, 3), 77, np.uint8)
    assert np.all(fit_square(constant, 32) == 77)
