"""Image files of every awkward kind, written with PIL, for the tests of decoding and of the demo."""

import io

import numpy as np
from PIL import Image


def _rgb(height, width, seed=0, noise=8.0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) // 32 % 256], -1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def odd_images(directory):
    """{kind: path} of images that are valid but unusual; every one must be read as RGB uint8."""
    directory.mkdir(parents=True, exist_ok=True)
    rgb = _rgb(40, 48)
    paths = {}

    def save(kind, image, name, **kwargs):
        paths[kind] = directory / name
        image.save(paths[kind], **kwargs)

    save("grayscale", Image.fromarray(rgb[..., 0]), "grey.png")
    save("rgba", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])), "alpha.png")
    save("palette", Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16), "palette.png")
    save("16-bit", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)), "sixteen.png")
    save("cmyk", Image.fromarray(rgb).convert("CMYK"), "cmyk.jpg", quality=90)
    frames = [Image.fromarray(_rgb(40, 48, seed)).convert("P") for seed in range(3)]
    paths["animated gif"] = directory / "animated.gif"
    frames[0].save(paths["animated gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("1x1", Image.fromarray(rgb[:1, :1]), "one.png")
    save("3x500", Image.fromarray(_rgb(3, 500)), "thin.png")
    save("webp", Image.fromarray(rgb), "photo.webp")
    # Smooth, so that it stays small as a file (under 1 MB) while being 24 megapixels.
    save("6000x4000 jpeg", Image.fromarray(_rgb(4000, 6000, noise=0)), "huge.jpg", quality=70)
    return paths


def bad_files(directory):
    """{kind: path} of files that are not usable images."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"empty": directory / "empty.jpg", "text": directory / "notes.jpg", "truncated": directory / "cut.jpg"}
    paths["empty"].write_bytes(b"")
    paths["text"].write_text("this is not an image\n")
    buffer = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buffer, format="JPEG")
    paths["truncated"].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    return paths
