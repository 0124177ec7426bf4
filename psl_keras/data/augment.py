"""Augmentation ladders T1 ⊆ T2 ⊆ T3 for the contrastive tasks (PSL §3.3.3), in `keras.ops`.

A ladder is a crop (T1) and, for each level, the batch steps on top of it; each level starts with every step of
the level below (checked), so T1 ⊆ T2 ⊆ T3 holds by construction. A step draws its random choices for one view
from uniforms (`sample`) and applies them to a batch of views (`apply`). The same code runs inside tf.data under
TensorFlow and on the accelerator under Keras on JAX (`psl_keras.data.transforms`):
- `sample`: every random choice of a view, from the example's own seed (per example, resumable);
- `crop`: the random resized crop and flip, per example on an image of any size (tf.data) or on a batch;
- `augment`: colour jitter, grayscale, blur and Sobel on the batch of views, each only where it was drawn.
Other Keras augmentation layers may sit in a level next to these; their randomness is their own generator's,
so a run that uses them repeats exactly only if it is never resumed.

Why not Keras's own augmentation layers (Keras 3.15's RandomColorJitter, RandomGrayscale, RandomGaussianBlur,
RandomCrop, RandomFlip, the successors of keras-cv's): each was measured against the step here
(`benchmarks/augmentation_layers.py`, 2-core CPU, one batch in a compiled function, 32 px x 512 / 224 px x 64)
and checked for what the ladder needs; none is both right and within 10% of ours.
- RandomGrayscale: the same luma, and it accepts a per-view choice made from the view's own seed
  (`transform_images`), but it takes 1.6x (32 px) and 1.85x (224 px) our time.
- RandomColorJitter: 0.66x / 0.56x our time, but brightness, contrast, saturation and hue always run in that
  order, each drawn from the layer's own per-batch generator; SimCLR's jitter takes a random order per view.
- RandomGaussianBlur: one sigma for the whole batch (SimCLR draws one per view), and 6.5x our time at 224 px.
- RandomCrop + RandomFlip: a fixed-size crop, without SimCLR's area and aspect-ratio draw or the resize; ours is
  that crop, resize and flip in one gather.
keras-cv's layers (`benchmarks/augmentation.py`) draw per batch too, its `RandomApply` runs image by image and
its `RandomCropAndResize` falls back to while-loops. Neither library has a Sobel step.
"""

from keras import ops

from psl_keras.data import transforms

ATTEMPTS, MIN_COVERED = 100, 0.1  # tf.image.sample_distorted_bounding_box's settings in SimCLR


class Step:
    """One batch step of a ladder, applied with probability `rate`."""

    uniforms = 1  # how many uniforms `sample` takes

    def __init__(self, rate):
        self.rate = float(rate)

    def sample(self, u):
        return {"apply": u[0] < self.rate}

    def apply(self, images, params):
        return transforms.apply_where(self.transform, images, params["apply"], params)


class RandomResizedCrop:
    """Random crop of `area` (fraction of the image) and `aspect_ratio`, resized to `size`, flipped with
    probability `flip`: SimCLR's `distorted_bounding_box_crop` geometry (at least 10% of the image covered,
    100 attempts, else the whole image), bilinear resize."""

    uniforms = 2 * ATTEMPTS + 3

    def __init__(self, size, area=(0.08, 1.0), aspect_ratio=(3 / 4, 4 / 3), flip=0.5):
        self.size = int(size)
        self.area = tuple(float(a) for a in area)
        self.aspect_ratio = tuple(float(a) for a in aspect_ratio)
        self.flip = float(flip)

    def sample(self, u, image_shape):
        """{"box": (y, x, h, w) int32, "flip"} of one view of an image of `image_shape` (height, width).

        tf.image.sample_distorted_bounding_box's draw with the whole image as the object, every attempt at once:
        an aspect ratio, then a height uniform between those of the smallest and largest area, the width from
        the aspect; the first attempt whose area is in range and covers MIN_COVERED wins, else the whole image."""
        height, width = (ops.cast(side, "float32") for side in image_shape)
        aspect = self.aspect_ratio[0] + u[:ATTEMPTS] * (self.aspect_ratio[1] - self.aspect_ratio[0])
        min_area, max_area = self.area[0] * height * width, self.area[1] * height * width
        low, high = ops.round(ops.sqrt(min_area / aspect)), ops.round(ops.sqrt(max_area / aspect))
        too_wide = ops.round(high * aspect) > width
        high = ops.where(too_wide, ops.floor((width + 0.5 - 1e-7) / aspect), high)
        high = ops.where(too_wide & (ops.round(high * aspect) > width), high - 1, high)
        high = ops.minimum(high, height)
        low = ops.minimum(low, high)
        h = low + ops.floor(u[ATTEMPTS:2 * ATTEMPTS] * (high - low + 1))
        h = ops.where(ops.round(h * aspect) * h < min_area, h + 1, h)
        h = ops.where(ops.round(h * aspect) * h > max_area, h - 1, h)
        w = ops.round(h * aspect)
        fits = ((w * h >= min_area) & (w * h <= max_area) & (w <= width) & (h <= height) & (w > 0) & (h > 0)
                & (w * h >= MIN_COVERED * height * width))
        first = ops.argmax(ops.cast(fits, "int32"))
        found = ops.any(fits)
        h = ops.where(found, ops.take(h, first), height)
        w = ops.where(found, ops.take(w, first), width)
        # The corner is uniform over [0, side - box), as there (the last position is never drawn).
        y = ops.floor(u[2 * ATTEMPTS] * ops.maximum(height - h, 0.0))
        x = ops.floor(u[2 * ATTEMPTS + 1] * ops.maximum(width - w, 0.0))
        return {"box": ops.cast(ops.stack([y, x, h, w]), "int32"), "flip": u[2 * ATTEMPTS + 2] < self.flip}

    def apply(self, images, params):
        """uint8 images [B, H, W, 3] -> float32 views [B, size, size, 3] in [0, 1]."""
        return transforms.crop_resize(transforms.to_float(images), params["box"], params["flip"], self.size)


class RandomColorJitter(Step):
    """SimCLR's colour distortion of strength `strength`, applied with probability `rate`: brightness
    ±0.8s (additive), contrast and saturation x[1-0.8s, 1+0.8s], hue ±0.2s, in a random order per view,
    each followed by a clip to [0, 1] (SimCLR's `color_jitter_rand`)."""

    uniforms = 9

    def __init__(self, strength=1.0, rate=0.8):
        super().__init__(rate)
        self.strength = float(strength)

    def sample(self, u):
        s, low = 0.8 * self.strength, max(1.0 - 0.8 * self.strength, 0.0)
        return {"apply": u[0] < self.rate, "brightness": -s + 2 * s * u[1], "contrast": low + (1 + s - low) * u[2],
                "saturation": low + (1 + s - low) * u[3], "hue": 0.2 * self.strength * (2 * u[4] - 1),
                "order": ops.cast(ops.argsort(u[5:9]), "int32")}

    def transform(self, images, params):
        # Each view runs the operation its order names at each position: brightness (0) or contrast (1), one
        # affine map per view, or saturation (2) or hue (3), one HSV round trip; the other factors neutral.
        def pick(operation, name, k, neutral):
            return ops.where(operation == k, ops.cast(params[name], "float32"), neutral)

        for position in range(4):
            operation = params["order"][:, position]
            factors = {"brightness": pick(operation, "brightness", 0, 0.0),
                       "contrast": pick(operation, "contrast", 1, 1.0),
                       "saturation": pick(operation, "saturation", 2, 1.0), "hue": pick(operation, "hue", 3, 0.0)}
            images = transforms.apply_where(_affine, images, operation < 2, factors)
            images = transforms.apply_where(_hsv, images, operation >= 2, factors)
        return images


def _affine(images, factors):
    mean = ops.mean(images, axis=(1, 2), keepdims=True)
    contrast = transforms.per_image(factors["contrast"])
    return ops.clip((images - mean) * contrast + mean + transforms.per_image(factors["brightness"]), 0.0, 1.0)


def _hsv(images, factors):
    hsv = ops.image.rgb_to_hsv(images)
    zero, one = ops.zeros_like(factors["hue"]), ops.ones_like(factors["hue"])
    scale = ops.stack([one, factors["saturation"], one], axis=-1)[:, None, None, :]
    hsv = hsv * scale + ops.stack([factors["hue"], zero, zero], axis=-1)[:, None, None, :]
    hsv = ops.clip(hsv - ops.floor(hsv) * ops.convert_to_tensor([1.0, 0.0, 0.0]), 0.0, 1.0)  # the hue wraps
    return ops.clip(ops.image.hsv_to_rgb(hsv), 0.0, 1.0)


class RandomGrayscale(Step):
    """Grayscale (the luma in three equal channels) with probability `rate` (SimCLR: 0.2)."""

    def transform(self, images, params):
        return transforms.grayscale(images)


class RandomGaussianBlur(Step):
    """Gaussian blur with probability `rate` and a per-view sigma in `sigma` (pixels), SimCLR's ImageNet
    setting: p 0.5, sigma 0.1-2.0, a kernel of about `kernel_fraction` = 10% of the image side (odd)."""

    uniforms = 2

    def __init__(self, rate=0.5, sigma=(0.1, 2.0), kernel_fraction=0.1):
        super().__init__(rate)
        self.sigma = tuple(float(s) for s in sigma)
        self.kernel_fraction = float(kernel_fraction)

    def sample(self, u):
        return {"apply": u[0] < self.rate, "sigma": self.sigma[0] + (self.sigma[1] - self.sigma[0]) * u[1]}

    def transform(self, images, params):
        return transforms.gaussian_blur(images, params["sigma"], blur_kernel_size(images.shape[1],
                                                                                  self.kernel_fraction) // 2)


class RandomSobel(Step):
    """Sobel filtering (`transforms.sobel_magnitude`) with probability `rate`."""

    def transform(self, images, params):
        return transforms.sobel_magnitude(images)


class AugmentationLadder:
    """A crop and nested levels of batch steps: level k (1-based) is the crop, then `levels[k - 1]`, each
    level a prefix of the next."""

    def __init__(self, crop, levels):
        self.crop_step = crop
        self.levels = [list(level) for level in levels]
        for lower, upper in zip(self.levels, self.levels[1:]):
            if len(upper) < len(lower) or any(a is not b for a, b in zip(lower, upper)):
                raise ValueError("Each ladder level must start with every step of the level below (T1 ⊆ T2 ⊆ T3).")

    @property
    def size(self):
        return self.crop_step.size

    @property
    def num_levels(self):
        return len(self.levels)

    def level(self, level):
        return [self.crop_step] + self.levels[level - 1]

    def uniforms(self, level):
        """How many uniforms one view's `sample` takes at `level`."""
        return sum(getattr(step, "uniforms", 0) for step in self.level(level))

    def sample(self, u, level, image_shape):
        """Every random choice of one view at `level` from its uniforms `u` [uniforms(level)]."""
        params = {"crop": self.crop_step.sample(u[:self.crop_step.uniforms], image_shape)}
        start = self.crop_step.uniforms
        for i, step in enumerate(self.levels[level - 1]):
            if isinstance(step, Step):
                params[str(i)] = step.sample(u[start:start + step.uniforms])
                start += step.uniforms
        return params

    def crop(self, images, params):
        """uint8 images [B, H, W, 3] -> views float32 [B, size, size, 3], cropped and flipped."""
        return self.crop_step.apply(images, params["crop"])

    def augment(self, views, params, level):
        """The level's batch steps on views [B, size, size, 3], with the choices `sample` drew for each."""
        for i, step in enumerate(self.levels[level - 1]):
            views = step.apply(views, params[str(i)]) if isinstance(step, Step) else step(views, training=True)
            views = ops.cast(views, "float32")
        return ops.clip(views, 0.0, 1.0)

    def describe(self, level):
        return " + ".join(type(step).__name__ for step in self.level(level))


def simclr_ladder(size, strength=1.0, crop_area=(0.08, 1.0), blur_rate=0.5, sobel_rate=0.2):
    """PSL's contrastive ladder on SimCLR's augmentation (MoCo v2's with strength 0.5, crop area 0.2-1):

    T1 = random resized crop + flip (SimCLR: area 0.08-1, aspect 3/4-4/3, flip 0.5);
    T2 = T1 + colour jitter (strength s, p 0.8) + grayscale (p 0.2), SimCLR's colour distortion;
    T3 = T2 + Gaussian blur (p 0.5, sigma 0.1-2, kernel 10% of the side: SimCLR's ImageNet blur) + Sobel
         (p 0.2: the paper gives none; Sobel removes colour and intensity altogether, as strong as grayscale,
         so it gets grayscale's rate).
    """
    t2 = [RandomColorJitter(strength, 0.8), RandomGrayscale(0.2)]
    t3 = t2 + [RandomGaussianBlur(blur_rate), RandomSobel(sobel_rate)]
    return AugmentationLadder(RandomResizedCrop(size, area=crop_area), [[], t2, t3])


def blur_kernel_size(size, kernel_fraction=0.1):
    """The odd kernel side `RandomGaussianBlur` uses at image side `size`."""
    return 2 * max(1, int(size * kernel_fraction) // 2) + 1


__all__ = ["AugmentationLadder", "RandomColorJitter", "RandomGaussianBlur", "RandomGrayscale", "RandomResizedCrop",
           "RandomSobel", "Step", "simclr_ladder", "blur_kernel_size"]
