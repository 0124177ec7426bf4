"""Multi-level rotation prediction (Gidaris et al. 2018; PSL Table 2).

Levels: R1 = {0, 180}, R2 = {0, 90, 180, 270}, R3 = the eight multiples of 45 degrees; label k means a
counter-clockwise rotation by k * 360 / |R_i| degrees, so R1 is a subset of R2 which is a subset of R3.

Geometry. A 45-degree rotation of a square leaves black corners, and a network learns to read them instead
of the image content. So every angle, 0 included, is cut the same way: rotate about the centre, keep the
square inscribed in the rotated image (side / sqrt(2)), take a random crop of it and resample to the output
size. Rotation, crop, flip and resize are one projective resample (one interpolation, no corners ever leave
the source image); reflection fills the sub-pixel border that bilinear sampling can touch.
"""

import math


from psl_keras.lazy import tf
from psl_keras.ranges import fraction, non_negative_int
from psl_keras.tasks.base import Task

ROTATION_LEVELS = (2, 4, 8)


def rotation_angles(level):
    """The angles (degrees) of level `level`: multiples of 360 / |R_level|."""
    count = ROTATION_LEVELS[level - 1]
    return [k * 360.0 / count for k in range(count)]


def rotation_crop_transform(angle, in_height, in_width, out_size, window, offset, flip):
    """The 8-parameter output->input map of `tf.raw_ops.ImageProjectiveTransformV3`.

    Output pixel (u, v) of an `out_size` square is taken from the image rotated counter-clockwise by
    `angle` (radians) about its centre, at a `window`-pixel square centred `offset` = (dx, dy) pixels from
    the centre of the rotated image; `flip` (0/1) mirrors the source image left-right before rotating.
    All arguments are float32 scalars (offset a [2] tensor); pixel centres sit at integer coordinates.
    """
    cos, sin = tf.cos(angle), tf.sin(angle)
    mirror = 1.0 - 2.0 * flip  # -1 flips the x axis of the source
    # M = F @ R^T: takes a vector in the rotated frame back to the source frame.
    m00, m01 = mirror * cos, -mirror * sin
    m10, m11 = sin, cos
    scale = window / out_size
    out_centre = (out_size - 1.0) / 2.0
    cx, cy = (in_width - 1.0) / 2.0, (in_height - 1.0) / 2.0
    tx, ty = offset[0], offset[1]
    a0, a1 = scale * m00, scale * m01
    b0, b1 = scale * m10, scale * m11
    a2 = -(a0 + a1) * out_centre + m00 * tx + m01 * ty + cx
    b2 = -(b0 + b1) * out_centre + m10 * tx + m11 * ty + cy
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def apply_transform(image, transform, out_size, fill_mode="REFLECT", interpolation="BILINEAR"):
    """Resamples one float image [H, W, C] with an 8-parameter transform into [out_size, out_size, C]."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=tf.cast(transform, tf.float32)[tf.newaxis],
        output_shape=tf.constant([out_size, out_size], tf.int32),
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode=fill_mode,
    )
    return out[0]


def smooth(image, sigma, radius=2):
    """Isotropic Gaussian blur of one float image [H, W, C] (a separable 5-tap kernel, reflected borders)."""
    taps = [math.exp(-(k * k) / (2.0 * sigma * sigma)) for k in range(-radius, radius + 1)]
    taps = tf.constant([t / sum(taps) for t in taps], tf.float32)
    channels = image.shape[-1] or 3
    x = tf.pad(image[tf.newaxis], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    vertical = tf.tile(tf.reshape(taps, [-1, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.tile(tf.reshape(taps, [1, -1, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, vertical, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, horizontal, [1, 1, 1, 1], "VALID")[0]


def resize_shorter_side(image, size):
    """Resizes a float image so its shorter side is `size` (antialiased), keeping the aspect ratio."""
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ratio = tf.cast(size, tf.float32) / tf.minimum(height, width)
    new_size = tf.cast(tf.round(tf.stack([height * ratio, width * ratio])), tf.int32)
    return tf.image.resize(image, new_size, antialias=True)


class RotationTask(Task):
    """Predict which of |R_level| rotations was applied; one random rotation per image."""

    name = "rotation"
    PRESETS = {"imagenet_paper": {"backbone": "revnet50"}}  # the paper's rotation network (§4.1)
    RESAMPLING = ("bilinear", "smooth")
    OPTIONS = {
        "crop_fraction": (0.0, "Share of the inscribed square the random crop covers (0: 224/256, 1 at <=64 px).",
                          fraction()),
        "resize_shorter": (0, "Shorter side before rotating (0: image_size*256/224; none at <=64 px).",
                           non_negative_int()),
        "resample": ("smooth", "smooth: bilinear then an isotropic 0.6-px Gaussian, which removes the angle's "
                               "interpolation fingerprint; bilinear: the resampling of runs made before smooth.",
                     RESAMPLING),
    }
    LEGACY_OPTIONS = {"resample": "bilinear"}
    SMOOTH_SIGMA = 0.6  # output pixels; measured by benchmarks/shortcuts.py

    def __init__(self, image_size, head_hidden=256, sync_bn=False, resize_shorter=None, crop_fraction=None,
                 resample="smooth"):
        super().__init__(image_size, head_hidden, sync_bn)
        if resample not in self.RESAMPLING:
            raise ValueError(f"resample must be one of {', '.join(self.RESAMPLING)}, got {resample!r}.")
        self.resample = resample
        large = self.image_size > 64
        # Paper (ImageNet): shorter side 256, 224 crops. Small images keep their own size.
        self.resize_shorter = int(resize_shorter or (round(self.image_size * 256 / 224) if large else 0))
        # Fraction of the inscribed square the random crop covers: 224/256 as in the paper for large
        # images; CIFAR-size images have too few pixels to lose, so they keep the whole square.
        self.crop_fraction = float(crop_fraction or (224 / 256 if large else 1.0))
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}.")

    def num_classes(self, level):
        return ROTATION_LEVELS[level - 1]

    def describe_level(self, level):
        angles = ", ".join(f"{a:g}" for a in rotation_angles(level))
        return f"rotation R{level} = {{{angles}}} degrees"

    def rotate(self, image, label, level, flip, offset_unit):
        """Rotates a float image by label * 360/|R_level| degrees and crops, as described above.

        `offset_unit` in [-1, 1]^2 places the random crop inside the inscribed square; `flip` in {0, 1}.
        """
        if self.resize_shorter:
            image = resize_shorter_side(image, self.resize_shorter)
        shape = tf.shape(image)
        height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        inscribed = tf.minimum(height, width) / math.sqrt(2.0)
        window = inscribed * self.crop_fraction
        offset = offset_unit * (inscribed - window) / 2.0
        angle = tf.cast(label, tf.float32) * (2.0 * math.pi / self.num_classes(level))
        transform = rotation_crop_transform(
            angle, height, width, float(self.image_size), window, offset, tf.cast(flip, tf.float32)
        )
        rotated = apply_transform(image, transform, self.image_size)
        if self.resample == "smooth":
            # Bilinear interpolation leaves creases along the source pixel grid, which turns with the angle:
            # a network can read multiples of 90 from odd multiples of 45 degrees on images without content.
            # An isotropic blur smooths the creases out for every angle alike (0 degrees included).
            rotated = smooth(rotated, self.SMOOTH_SIGMA)
        return rotated

    def preprocess(self, image, seed, level):
        return self.make_example(image, seed, level)

    def make_example(self, image, seed, level, label=None):
        """`preprocess` with the rotation chosen (label k = k * 360 / |R_level| degrees), e.g. by the demo."""
        label_seed, flip_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        if label is None:
            label = tf.random.stateless_uniform(
                [], label_seed, minval=0, maxval=self.num_classes(level), dtype=tf.int32
            )
        label = tf.cast(label, tf.int32)
        flip = tf.cast(tf.random.stateless_uniform([], flip_seed) < 0.5, tf.int32)
        offset_unit = tf.random.stateless_uniform([2], offset_seed, minval=-1.0, maxval=1.0)
        image = tf.image.convert_image_dtype(image, tf.float32)
        rotated = self.rotate(image, label, level, flip, offset_unit)
        return tf.clip_by_value(rotated, 0.0, 1.0), label

    def get_config(self):
        config = super().get_config()
        config.update(resize_shorter=self.resize_shorter, crop_fraction=self.crop_fraction, resample=self.resample)
        return config

    def batch_rotate(self, images, labels, level, flips, offsets):
        """The rotation examples of a whole batch of same-size images, with `keras.ops` only: the on-device
        input path of Keras on JAX, where tf.data is absent. The same geometry as `rotate`
        (tested against it) for images that need no resizing (the <=64 px setting).

        images: uint8 or float [B, H, W, 3]; labels int [B] (angle k * 360 / |R_level|); flips {0, 1} [B];
        offsets in [-1, 1] [B, 2]. Returns float32 [B, image_size, image_size, 3] in [0, 1].
        """
        from keras import ops  # here, not at the top: the TF input pipeline above must keep its line numbers

        if self.resize_shorter:
            raise NotImplementedError("batch_rotate serves images at their own size (<=64 px settings).")
        images = ops.convert_to_tensor(images)
        if images.dtype == "uint8":
            images = ops.cast(images, "float32") / 255.0
        height, width = float(images.shape[1]), float(images.shape[2])
        inscribed = min(height, width) / math.sqrt(2.0)
        window = inscribed * self.crop_fraction
        offsets = ops.cast(offsets, "float32") * (inscribed - window) / 2.0
        angle = ops.cast(labels, "float32") * math.radians(360.0 / self.num_classes(level))
        cos, sin = ops.cos(angle), ops.sin(angle)
        mirror = 1.0 - 2.0 * ops.cast(flips, "float32")
        m00, m01, m10, m11 = mirror * cos, -mirror * sin, sin, cos
        scale = window / self.image_size
        out_centre = (self.image_size - 1.0) / 2.0
        a0, a1, b0, b1 = scale * m00, scale * m01, scale * m10, scale * m11
        a2 = -(a0 + a1) * out_centre + m00 * offsets[:, 0] + m01 * offsets[:, 1] + (width - 1.0) / 2.0
        b2 = -(b0 + b1) * out_centre + m10 * offsets[:, 0] + m11 * offsets[:, 1] + (height - 1.0) / 2.0
        zeros = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        if images.shape[1] != self.image_size or images.shape[2] != self.image_size:
            # affine_transform keeps the input size: sample into a canvas of the output size first
            raise NotImplementedError("batch_rotate needs images of the output size (image_size x image_size).")
        rotated = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")
        if self.resample == "smooth":
            taps = [math.exp(-(k * k) / (2.0 * self.SMOOTH_SIGMA ** 2)) for k in range(-2, 3)]
            taps = ops.convert_to_tensor([t / sum(taps) for t in taps], "float32")
            padded = ops.pad(rotated, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="reflect")
            vertical = ops.tile(ops.reshape(taps, (5, 1, 1, 1)), (1, 1, 3, 1))
            horizontal = ops.tile(ops.reshape(taps, (1, 5, 1, 1)), (1, 1, 3, 1))
            rotated = ops.depthwise_conv(ops.depthwise_conv(padded, vertical), horizontal)
        return ops.clip(rotated, 0.0, 1.0)

    # --- Keras on JAX: batches made on the device (the JAX trainer jit-compiles array_examples) -------------
    def draw_array_params(self, rng, count, level):
        """Per example, as `make_example` draws them: the angle's label, a left-right flip, the crop offset."""
        return {"labels": rng.integers(0, self.num_classes(level), count).astype("int32"),
                "flips": rng.integers(0, 2, count).astype("int32"),
                "offsets": rng.uniform(-1.0, 1.0, (count, 2)).astype("float32")}

    def array_examples(self, images, params, level):
        return self.batch_rotate(images, params["labels"], level, params["flips"], params["offsets"]), params["labels"]
