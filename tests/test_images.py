"""Reading image files from the wild: every valid kind becomes RGB uint8, every bad file one clear PSLError."""

import numpy as np
import pytest

from psl_keras.errors import PSLError
from psl_keras.data.images import fit_square, read_image

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


def _upright_photo(height=30, width=60):
    """A landscape photo: top half red with a green top-left quarter, bottom half blue (up and left readable)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (230, 20, 20)
    image[: height // 2, : width // 2] = (20, 230, 20)
    image[height // 2:] = (20, 20, 230)
    return image


def test_a_sideways_camera_photo_arrives_upright(tmp_path):
    """A camera stores the sensor's pixels and an EXIF orientation tag; every one of the 8 tags is undone."""
    from PIL import Image

    upright = _upright_photo()
    # What the camera stores for each tag: the transform whose inverse the tag asks for.
    stored_as = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: np.transpose(a, (1, 0, 2)), 6: lambda a: np.rot90(a, 1),
                 7: lambda a: np.transpose(a, (1, 0, 2))[::-1, ::-1], 8: lambda a: np.rot90(a, -1)}
    for tag, store in stored_as.items():
        path = tmp_path / f"orientation{tag}.jpg"
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(np.ascontiguousarray(store(upright))).save(path, quality=95, exif=exif)
        image = read_image(str(path)).astype(int)
        assert image.shape == upright.shape, tag  # landscape again
        corners = [image[:10, :20], image[:10, -20:], image[-10:, :20], image[-10:, -20:]]
        colour = [int(np.argmax(c.mean(axis=(0, 1)))) for c in corners]
        assert colour == [1, 0, 2, 2], tag  # green top-left, red top-right, blue below


def test_a_large_photo_is_decoded_at_reduced_size_and_keeps_its_orientation(tmp_path, monkeypatch):
    """JPEG draft decoding: a 40-megapixel panorama is never held at full size, and what comes out keeps its
    aspect (landscape stays landscape, portrait stays portrait)."""
    from PIL import Image, ImageOps

    decoded = []
    transpose = ImageOps.exif_transpose
    monkeypatch.setattr(ImageOps, "exif_transpose", lambda image, **kw: decoded.append(image.size) or
                        transpose(image, **kw))
    panorama = np.kron(_upright_photo(16, 52), np.ones((160, 160, 1), np.uint8))  # 2560 x 8320
    for name, array in (("landscape", panorama), ("portrait", np.ascontiguousarray(np.rot90(panorama)))):
        path = tmp_path / f"{name}.jpg"
        Image.fromarray(array).save(path, quality=60)
        image = read_image(str(path))
        height, width = array.shape[:2]
        assert min(image.shape[:2]) == 1024 and (image.shape[0] < image.shape[1]) == (height < width), name
        assert abs(image.shape[0] / image.shape[1] - height / width) < 0.01, name
        # Decoded at 1/2 scale (draft), not at full size: a quarter of the pixels in memory.
        assert decoded[-1][0] * decoded[-1][1] <= width * height / 4, (name, decoded[-1])


def test_an_animation_is_read_at_its_first_frame(tmp_path):
    from PIL import Image

    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
    frames = [Image.new("RGB", (24, 16), colour) for colour in colours]
    for name in ("animated.gif", "animated.webp", "animated.png"):
        path = tmp_path / name
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
        image = read_image(str(path)).astype(int)
        assert image.shape == (16, 24, 3), name
        assert np.abs(image.mean(axis=(0, 1)) - colours[0]).max() < 20, name
