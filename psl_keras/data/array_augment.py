"""The contrastive ladder T1 ⊆ T2 ⊆ T3 on the device, in `keras.ops` (the input path of Keras on JAX).

`psl_keras.data.augment` builds the ladder from keras-cv and tf.image layers that run in tf.data; where TensorFlow is
absent (the JAX machine) this module makes the same views from a batch of same-size images held on the device:

- `ArrayLadder.draw(rng, count, level)` draws every random choice of `count` views with NumPy, as the TF layers
  draw them per image (crop box, flip, jitter factors and order, grayscale, blur sigma, Sobel);
- `ArrayLadder.views(images, params, level)` applies them to the batch with `keras.ops` only, so the JAX
  trainer compiles it and runs it where the images are.

The steps and their settings are `augment.simclr_ladder`'s (tested step by step against those layers):
T1 = random resized crop (area, aspect 3/4-4/3, at least 10% of the image) + flip 0.5; T2 = T1 + colour jitter
(strength s, p 0.8, random order) + grayscale p 0.2; T3 = T2 + Gaussian blur (p, sigma 0.1-2, kernel 10% of the
side) + Sobel (p). Images come in uint8 [B, H, W, 3] and leave float32 [B, size, size, 3] in [0, 1].
"""

import numpy as np
from keras import ops

LUMA = (0.2989, 0.587, 0.114)  # tf.image.rgb_to_grayscale's weights (keras-cv's Grayscale uses them too)
JITTER_RATE, GRAYSCALE_RATE = 0.8, 0.2  # SimCLR's colour distortion
BLUR_SIGMA, BLUR_KERNEL_FRACTION = (0.1, 2.0), 0.1
ASPECT_RATIO, MIN_COVERED, ATTEMPTS, FLIP = (3 / 4, 4 / 3), 0.1, 100, 0.5


def crop_boxes(rng, count, height, width, area, aspect_ratio=ASPECT_RATIO, attempts=ATTEMPTS):
    """`count` crop boxes (y, x, h, w), drawn as tf.image.sample_distorted_bounding_box draws them with the whole
    image as the object (its GenerateRandomCrop, vectorised): per attempt an aspect ratio, then a height uniform
    between those of the smallest and largest area, the width from the aspect; the first attempt whose area is
    in range and covers MIN_COVERED of the image wins (up to `attempts`), else the whole image. The corner is
    uniform over [0, side - box) as there (the last position is never drawn)."""
    boxes = np.zeros((count, 2), np.int64)
    found = np.zeros(count, bool)
    tried = 0
    while tried < attempts and not found.all():
        # Blocks of 10 attempts: almost every image fits in its first, so the rest are rarely drawn.
        block = min(10, attempts - tried)
        todo = np.flatnonzero(~found)
        h, w, fits = _attempts(rng, len(todo), block, height, width, area, aspect_ratio)
        first = np.argmax(fits, axis=1)
        hit = fits[np.arange(len(todo)), first]
        rows = todo[hit]
        boxes[rows, 0] = h[hit, first[hit]]
        boxes[rows, 1] = w[hit, first[hit]]
        found[rows] = True
        tried += block
    boxes[~found] = (height, width)
    h, w = boxes[:, 0], boxes[:, 1]
    y = np.floor(rng.uniform(size=count) * np.maximum(height - h, 0)).astype(np.int64)
    x = np.floor(rng.uniform(size=count) * np.maximum(width - w, 0)).astype(np.int64)
    return np.stack([y, x, h, w], axis=1).astype("int32")


def _attempts(rng, count, attempts, height, width, area, aspect_ratio):
    """(heights, widths, fits) [count, attempts] of GenerateRandomCrop's draws."""
    shape = (count, attempts)
    aspect = rng.uniform(aspect_ratio[0], aspect_ratio[1], shape)
    min_area, max_area = area[0] * height * width, area[1] * height * width
    low = np.rint(np.sqrt(min_area / aspect))
    high = np.rint(np.sqrt(max_area / aspect))
    too_wide = np.rint(high * aspect) > width
    high = np.where(too_wide, np.floor((width + 0.5 - 1e-7) / aspect), high)
    high = np.where(too_wide & (np.rint(high * aspect) > width), high - 1, high)
    high = np.minimum(high, height)
    low = np.minimum(low, high)
    h = low + np.floor(rng.uniform(size=shape) * (high - low + 1))
    w = np.rint(h * aspect)
    grow = w * h < min_area
    h = np.where(grow, h + 1, h)
    w = np.rint(h * aspect)
    shrink = w * h > max_area
    h = np.where(shrink, h - 1, h)
    w = np.rint(h * aspect)
    fits = ((w * h >= min_area) & (w * h <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
            & (w * h >= MIN_COVERED * height * width))
    return h.astype(np.int64), w.astype(np.int64), fits


def crop_resize(images, boxes, flips, size):
    """Bilinear resize of each image's box to size x size (tf.image.resize of the slice: half-pixel centres,
    edges clamped to the box), mirrored where `flips` is 1. images float [B, H, W, C]."""
    count, height, width, channels = images.shape
    boxes = ops.cast(boxes, "float32")
    y0, x0, h, w = boxes[:, 0:1], boxes[:, 1:2], boxes[:, 2:3], boxes[:, 3:4]
    grid = ops.arange(size, dtype="float32")[None, :]
    ys = ops.clip((grid + 0.5) * h / size - 0.5, 0.0, h - 1.0) + y0  # [B, size]
    xs = ops.clip((grid + 0.5) * w / size - 0.5, 0.0, w - 1.0) + x0
    flips = ops.cast(flips, "float32")[:, None]
    xs = flips * ops.flip(xs, axis=1) + (1.0 - flips) * xs
    y_low, x_low = ops.floor(ys), ops.floor(xs)
    wy, wx = (ys - y_low)[:, :, None, None], (xs - x_low)[:, None, :, None]
    y_low, x_low = ops.cast(y_low, "int32"), ops.cast(x_low, "int32")
    y_high = ops.minimum(y_low + 1, height - 1)
    x_high = ops.minimum(x_low + 1, width - 1)
    flat = ops.reshape(images, (-1, channels))
    base = ops.arange(count, dtype="int32")[:, None, None] * (height * width)

    def pixels(y, x):
        index = base + y[:, :, None] * width + x[:, None, :]
        return ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0), (count, size, size, channels))

    top = pixels(y_low, x_low) * (1.0 - wx) + pixels(y_low, x_high) * wx
    bottom = pixels(y_high, x_low) * (1.0 - wx) + pixels(y_high, x_high) * wx
    return top * (1.0 - wy) + bottom * wy


def _per_image(values):
    return ops.convert_to_tensor(values, "float32")[:, None, None, None]


def adjust_brightness(images, delta):
    return images + _per_image(delta)


def adjust_contrast(images, factor):
    mean = ops.mean(images, axis=(1, 2), keepdims=True)
    return (images - mean) * _per_image(factor) + mean


def adjust_saturation(images, factor):
    hsv = ops.image.rgb_to_hsv(images)
    saturation = ops.clip(hsv[..., 1:2] * _per_image(factor), 0.0, 1.0)
    return ops.image.hsv_to_rgb(ops.concatenate([hsv[..., 0:1], saturation, hsv[..., 2:3]], axis=-1))


def adjust_hue(images, delta):
    hsv = ops.image.rgb_to_hsv(images)
    hue = ops.mod(hsv[..., 0:1] + _per_image(delta), 1.0)
    return ops.image.hsv_to_rgb(ops.concatenate([hue, hsv[..., 1:3]], axis=-1))


def grayscale(images):
    luma = ops.sum(images * ops.convert_to_tensor(LUMA, "float32"), axis=-1, keepdims=True)
    return ops.repeat(luma, 3, axis=-1)


def _reflect_pad(images, radius):
    return ops.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="reflect")


def gaussian_blur(images, sigma, radius):
    """Per-image Gaussian of std `sigma` [B], (2 radius + 1) taps, reflected borders (`augment.gaussian_blur`)."""
    taps = ops.arange(-radius, radius + 1, dtype="float32")
    sigma = ops.convert_to_tensor(sigma, "float32")[:, None]
    kernels = ops.exp(-ops.square(taps)[None, :] / (2.0 * ops.square(sigma)))
    kernels = kernels / ops.sum(kernels, axis=1, keepdims=True)  # [B, 2r+1]
    height, width = images.shape[1], images.shape[2]
    padded = _reflect_pad(images, radius)
    # Separable: rows, then columns, each a weighted sum of shifted copies with the image's own weights.
    rows = sum(kernels[:, k, None, None, None] * padded[:, k:k + height, :, :] for k in range(2 * radius + 1))
    return sum(kernels[:, k, None, None, None] * rows[:, :, k:k + width, :] for k in range(2 * radius + 1))


def sobel_magnitude(images):
    """|G| / 4 of the luma, clipped to [0, 1], in three channels (`augment.sobel_magnitude`)."""
    luma = _reflect_pad(grayscale(images)[..., :1], 1)
    height, width = images.shape[1], images.shape[2]
    shift = lambda dy, dx: luma[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width, :]  # noqa: E731
    gy = (shift(1, -1) + 2 * shift(1, 0) + shift(1, 1)) - (shift(-1, -1) + 2 * shift(-1, 0) + shift(-1, 1))
    gx = (shift(-1, 1) + 2 * shift(0, 1) + shift(1, 1)) - (shift(-1, -1) + 2 * shift(0, -1) + shift(1, -1))
    magnitude = ops.sqrt(ops.square(gy) + ops.square(gx) + 1e-12) / 4.0
    return ops.repeat(ops.clip(magnitude, 0.0, 1.0), 3, axis=-1)


def _select(chosen, changed, images):
    chosen = ops.cast(ops.convert_to_tensor(chosen), "float32")[:, None, None, None]
    return chosen * changed + (1.0 - chosen) * images


class ArrayLadder:
    """`augment.simclr_ladder(size, strength, crop_area, blur_rate, sobel_rate)` for same-size image batches."""

    def __init__(self, size, strength=1.0, crop_area=(0.08, 1.0), blur_rate=0.5, sobel_rate=0.2):
        self.size = int(size)
        self.strength = float(strength)
        self.crop_area = tuple(float(a) for a in crop_area)
        self.blur_rate = float(blur_rate)
        self.sobel_rate = float(sobel_rate)

    STEPS = (("RandomResizedCrop",), ("RandomColorJitter", "RandomGrayscale"), ("RandomGaussianBlur", "RandomSobel"))

    def describe(self, level):
        """The level's steps, named as `AugmentationLadder.describe` names the TF ladder's layers."""
        return " + ".join(name for steps in self.STEPS[:level] for name in steps)

    @property
    def blur_radius(self):
        return max(1, int(self.size * BLUR_KERNEL_FRACTION) // 2)

    def draw(self, rng, count, level, height, width):
        """The random choices of `count` views of images height x width at `level`: a dict of NumPy arrays."""
        params = {"boxes": crop_boxes(rng, count, height, width, self.crop_area),
                  "flips": (rng.uniform(size=count) < FLIP).astype("int32")}
        if level >= 2:
            s = 0.8 * self.strength
            params.update(
                jitter=(rng.uniform(size=count) < JITTER_RATE).astype("int32"),
                brightness=rng.uniform(-s, s, count).astype("float32"),
                contrast=rng.uniform(max(1.0 - s, 0.0), 1.0 + s, count).astype("float32"),
                saturation=rng.uniform(max(1.0 - s, 0.0), 1.0 + s, count).astype("float32"),
                hue=rng.uniform(-0.2 * self.strength, 0.2 * self.strength, count).astype("float32"),
                order=np.argsort(rng.uniform(size=(count, 4)), axis=1).astype("int32"),
                gray=(rng.uniform(size=count) < GRAYSCALE_RATE).astype("int32"))
        if level >= 3:
            params.update(blur=(rng.uniform(size=count) < self.blur_rate).astype("int32"),
                          sigma=rng.uniform(*BLUR_SIGMA, count).astype("float32"),
                          sobel=(rng.uniform(size=count) < self.sobel_rate).astype("int32"))
        return params

    def views(self, images, params, level):
        """The views of uint8 images [B, H, W, 3] (one per row of `params`): float32 [B, size, size, 3]."""
        images = ops.cast(ops.convert_to_tensor(images), "float32")
        # Resize first, then scale to [0, 1], as RandomResizedCrop does (the same arithmetic).
        views = crop_resize(images, params["boxes"], params["flips"], self.size) / 255.0
        views = ops.clip(views, 0.0, 1.0)
        if level >= 2:
            views = _select(params["jitter"], self.jitter(views, params), views)
            views = _select(params["gray"], grayscale(views), views)
        if level >= 3:
            views = _select(params["blur"], gaussian_blur(views, params["sigma"], self.blur_radius), views)
            views = _select(params["sobel"], sobel_magnitude(views), views)
        return ops.clip(views, 0.0, 1.0)

    def jitter(self, views, params):
        """Brightness, contrast, saturation and hue in each view's own order, each followed by a clip."""
        operations = [lambda x: adjust_brightness(x, params["brightness"]),
                      lambda x: adjust_contrast(x, params["contrast"]),
                      lambda x: adjust_saturation(x, params["saturation"]),
                      lambda x: adjust_hue(x, params["hue"])]
        order = ops.convert_to_tensor(params["order"], "int32")
        for position in range(4):
            # Every view runs the four operations; each keeps the one its order names for this position.
            results = [ops.clip(op(views), 0.0, 1.0) for op in operations]
            chosen = [ops.cast(ops.equal(order[:, position], k), "float32")[:, None, None, None] for k in range(4)]
            views = sum(c * result for c, result in zip(chosen, results))
        return views


__all__ = ["ArrayLadder", "crop_boxes", "crop_resize", "gaussian_blur", "sobel_magnitude", "grayscale"]
