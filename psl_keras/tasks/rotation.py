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

from keras import ops

from psl_keras.data import transforms
from psl_keras.ranges import fraction, non_negative_int
from psl_keras.tasks.base import Task

ROTATION_LEVELS = (2, 4, 8)


def rotation_angles(level):
    """The angles (degrees) of level `level`: multiples of 360 / |R_level|."""
    count = ROTATION_LEVELS[level - 1]
    return [k * 360.0 / count for k in range(count)]


def rotation_transform(angle, flip, window, offset, in_shape, out_size):
    """The output->input maps [B, 8] (`keras.ops.image.affine_transform`'s) of rotated crops.

    Output pixel (u, v) of an `out_size` square is taken from the image rotated counter-clockwise by `angle` [B]
    (radians) about its centre, at a `window`-pixel square centred `offset` [B, 2] = (dx, dy) pixels from the
    centre of the rotated image; `flip` [B] mirrors the source left-right before rotating. Pixel centres sit
    at integer coordinates.
    """
    height, width = (ops.cast(side, "float32") for side in in_shape)
    cos, sin = ops.cos(angle), ops.sin(angle)
    mirror = 1.0 - 2.0 * ops.cast(flip, "float32")  # -1 flips the x axis of the source
    # M = F @ R^T takes a vector in the rotated frame back to the source frame.
    m00, m01, m10, m11 = mirror * cos, -mirror * sin, sin, cos
    scale = window / out_size
    centre = (out_size - 1.0) / 2.0
    a0, a1, b0, b1 = scale * m00, scale * m01, scale * m10, scale * m11
    a2 = -(a0 + a1) * centre + m00 * offset[:, 0] + m01 * offset[:, 1] + (width - 1.0) / 2.0
    b2 = -(b0 + b1) * centre + m10 * offset[:, 0] + m11 * offset[:, 1] + (height - 1.0) / 2.0
    zeros = ops.zeros_like(a0)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


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

    def sample(self, seed, level, image_shape):
        """The angle's label (k * 360 / |R_level| degrees), a left-right flip, the crop's offset in [-1, 1]^2."""
        u = transforms.uniform(seed, [4])
        return {"label": transforms.choice(u[0], self.num_classes(level)), "flip": u[1] < 0.5,
                "offset": 2.0 * u[2:4] - 1.0}

    def prepare(self, images, params, level):
        return self.rotate(images, params["label"], level, params["flip"], params["offset"]), params["label"]

    def rotate(self, images, labels, level, flips, offsets):
        """Rotates images [B, H, W, 3] by labels * 360/|R_level| degrees and crops, as described above.

        `offsets` [B, 2] in [-1, 1] place the random crop inside the inscribed square; `flips` [B] in {0, 1}.
        Returns float32 [B, image_size, image_size, 3] in [0, 1].
        """
        images = transforms.to_float(images)
        if self.resize_shorter:
            images = transforms.resize_shorter_side(images, self.resize_shorter)
        # Every crop lies in the disc inscribed in the image's centred square: resample that square only.
        height, width = ops.shape(images)[1:3]
        static = isinstance(height, int) and isinstance(width, int)  # JAX: static sizes, kept Python ints
        side = min(height, width) if static else ops.minimum(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        images = images[:, top:top + side, left:left + side]
        in_shape = (side, side)
        inscribed = ops.cast(ops.minimum(in_shape[0], in_shape[1]), "float32") / math.sqrt(2.0)
        window = inscribed * self.crop_fraction
        offsets = ops.cast(offsets, "float32") * (inscribed - window) / 2.0
        angles = ops.cast(labels, "float32") * (2.0 * math.pi / self.num_classes(level))
        transform = rotation_transform(angles, flips, window, offsets, in_shape, self.image_size)
        # affine_transform's output has the input's size: a canvas at least as large as the output (grown at the
        # bottom and right, where no crop reaches), then the output's corner of it.
        grow = max(self.image_size - side, 0) if static else ops.maximum(self.image_size - side, 0)
        images = ops.pad(images, [[0, 0], [0, grow], [0, grow], [0, 0]])
        rotated = ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")
        rotated = rotated[:, :self.image_size, :self.image_size]
        if self.resample == "smooth":
            # Bilinear interpolation leaves creases along the source pixel grid, which turns with the angle:
            # a network can read multiples of 90 from odd multiples of 45 degrees on images without content.
            # An isotropic blur smooths the creases out for every angle alike (0 degrees included).
            rotated = transforms.gaussian_blur(rotated, ops.full_like(angles, self.SMOOTH_SIGMA), 2)
        return ops.clip(rotated, 0.0, 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(resize_shorter=self.resize_shorter, crop_fraction=self.crop_fraction, resample=self.resample)
        return config
