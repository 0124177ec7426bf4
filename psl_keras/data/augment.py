"""Augmentation ladders T1 ⊆ T2 ⊆ T3 for the contrastive tasks (PSL §3.3.3).

A ladder is a list of levels; a level is a list of augmentation layers, and each level starts with the whole
previous one (checked), so T1 ⊆ T2 ⊆ T3 holds by construction. Any Keras or keras-cv augmentation layer may
sit in a ladder next to the layers below.

How a level runs (fast, and repeatable to the image):
- Every random choice is made per image, from that image's own stateless seed, in the tf.data map that
  handles one example. A resumed run re-creates each example from its seed and so sees the views an
  unbroken run would.
- Per example (`apply_one`): `RandomResizedCrop` (images differ in size; it brings every view to the
  training size) and `RandomColorJitter` (tf.image's fused colour kernels take one factor per call, which is
  what one image needs).
- Per batch (`augment`, with the parameters `sample` drew per example): grayscale (keras-cv's `Grayscale`),
  Gaussian blur with a per-image sigma (one depthwise convolution for all picked images) and Sobel
  filtering, each only on the images its probability picked.

Why not keras-cv end to end (measured in `benchmarks/augmentation.py`): its `RandomApply` runs `map_fn`
image by image, `RandomCropAndResize` falls back to while-loops, its layers draw from a stateful generator
(not resumable), its per-image colour factors go through unfused HSV round trips (keras-cv's four colour
layers fed with our factors on the batch were 2.6x slower at 224 px than tf.image per example), Keras
core's `RandomGaussianBlur` draws one sigma per batch, and neither library has a Sobel layer.

Images are float32 in [0, 1] after the crop.
"""

import keras

from psl_keras.lazy import tf

_INT32_MAX = 2**31 - 1


def where_selected(fn, images, selected, *params):
    """`fn(images[selected], *params[selected])` written back into `images`; the others stay as they are.

    Costs only the selected images (a gather and a scatter), unlike `tf.where` over two full results.
    """
    index = tf.where(selected)
    picked = [tf.gather_nd(p, index) for p in params]
    subset = tf.gather_nd(images, index)
    # Some operations (a reflecting pad over zero images) fail on an empty batch: skip them then.
    changed = tf.cond(tf.shape(index)[0] > 0, lambda: tf.cast(fn(subset, *picked), images.dtype), lambda: subset)
    return tf.tensor_scatter_nd_update(images, index, changed)


def gaussian_blur(images, sigma, radius):
    """Blurs images [N, H, W, 3] with per-image Gaussians of std `sigma` [N] and a (2 radius + 1)-tap kernel.

    One separable depthwise convolution for the whole batch: the batch is folded into the channels so that
    each image gets its own kernel. Borders are reflected, so edges do not darken.
    """
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernels = tf.exp(-tf.square(offsets)[tf.newaxis] / (2.0 * tf.square(sigma)[:, tf.newaxis]))
    kernels = kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)  # [N, 2r+1]
    count, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    folded = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, height, width, count * 3])
    folded = tf.pad(folded, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    per_channel = tf.transpose(tf.repeat(kernels, 3, axis=0))  # [2r+1, N*3]
    folded = tf.nn.depthwise_conv2d(folded, per_channel[:, tf.newaxis, :, tf.newaxis], [1, 1, 1, 1], "VALID")
    folded = tf.nn.depthwise_conv2d(folded, per_channel[tf.newaxis, :, :, tf.newaxis], [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(folded, [height, width, count, 3]), [2, 0, 1, 3])


def sobel_magnitude(images):
    """The Sobel gradient magnitude of the luma, |G| / 4 clipped to [0, 1] (each Sobel kernel's positive taps
    sum to 4, so a full-range step edge maps to 1), in all three channels; borders reflected."""
    edges = tf.image.sobel_edges(tf.image.rgb_to_grayscale(images))  # [N, H, W, 1, 2]
    magnitude = tf.sqrt(tf.reduce_sum(tf.square(edges), axis=-1) + 1e-12) / 4.0
    return tf.tile(tf.clip_by_value(magnitude, 0.0, 1.0), [1, 1, 1, 3])


class LadderLayer(keras.layers.Layer):
    """A ladder step: `sample(seed)` draws one image's parameters (stateless), `augment(images, params)`
    transforms a batch with per-image parameters. Called on its own, like any Keras augmentation layer,
    it draws per-image seeds from its own seed."""

    # True: `apply_one(image, seed)` runs in the per-example step (the crop, on an image of any size, and the
    # colour jitter); else `sample` per example and `augment` per batch.
    per_example = False

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def sample(self, seed):
        """A dict of this image's parameters (scalars or small vectors) from a shape-[2] integer seed."""
        return {}

    def augment(self, images, params):
        raise NotImplementedError

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images, tf.float32)
        count = tf.shape(images)[0]
        base = tf.cast(keras.random.randint([2], 0, _INT32_MAX, seed=self.seed_generator), tf.int64)
        seeds = tf.random.stateless_uniform([count, 2], base, maxval=_INT32_MAX, dtype=tf.int64)
        if self.per_example:
            return tf.map_fn(lambda args: self.apply_one(*args), (images, seeds), fn_output_signature=tf.float32)
        return self.augment(images, tf.vectorized_map(self.sample, seeds))

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package="psl_keras")
class RandomResizedCrop(LadderLayer):
    """Random crop of `area` (fraction of the image) and `aspect_ratio`, resized to `size`, flipped with
    probability `flip`. SimCLR's `distorted_bounding_box_crop` geometry (area 0.08-1, aspect 3/4-4/3, at
    least 10% of the image covered, 100 attempts, else the whole image), bilinear resize."""

    per_example = True

    def __init__(self, size, area=(0.08, 1.0), aspect_ratio=(3 / 4, 4 / 3), flip=0.5, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.size = int(size)
        self.area = tuple(float(a) for a in area)
        self.aspect_ratio = tuple(float(a) for a in aspect_ratio)
        self.flip = float(flip)

    def apply_one(self, image, seed):
        """One view: uint8 (or [0, 1] float) image [H, W, 3] of any size -> float32 [size, size, 3] in [0, 1]."""
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed, min_object_covered=0.1,
            aspect_ratio_range=self.aspect_ratio, area_range=self.area, max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        # Slice, then resize only the crop (measured faster here than one crop_and_resize of the whole image),
        # and scale to [0, 1] after the resize, on the small output.
        view = tf.image.resize(tf.slice(image, begin, extent), [self.size, self.size])
        view = view / 255.0 if image.dtype == tf.uint8 else view
        flipped = tf.random.stateless_uniform([], flip_seed) < self.flip
        return tf.cond(flipped, lambda: tf.reverse(view, [1]), lambda: view)

    def get_config(self):
        return {**super().get_config(), "size": self.size, "area": self.area, "aspect_ratio": self.aspect_ratio,
                "flip": self.flip}


@keras.saving.register_keras_serializable(package="psl_keras")
class RandomColorJitter(LadderLayer):
    """SimCLR's colour distortion of strength `strength`, applied with probability `rate`: brightness
    ±0.8s (additive), contrast and saturation x[1-0.8s, 1+0.8s], hue ±0.2s, in a random order per image,
    each followed by a clip to [0, 1] (SimCLR's `color_jitter_rand`).

    Per example, with tf.image's fused kernels: batched per-image factors need keras-cv's unfused HSV round
    trips, measured 2.6x slower at 224 px (benchmarks/augmentation.py)."""

    per_example = True

    def __init__(self, strength=1.0, rate=0.8, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.strength = float(strength)
        self.rate = float(rate)

    def sample(self, seed):
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
        s = 0.8 * self.strength
        uniform = lambda i, low, high: tf.random.stateless_uniform([], seeds[i], low, high)  # noqa: E731
        return {
            "apply": tf.random.stateless_uniform([], seeds[0]) < self.rate,
            "brightness": uniform(1, -s, s),
            "contrast": uniform(2, max(1.0 - s, 0.0), 1.0 + s),
            "saturation": uniform(3, max(1.0 - s, 0.0), 1.0 + s),
            "hue": uniform(4, -0.2 * self.strength, 0.2 * self.strength),
            "order": tf.cast(tf.argsort(tf.random.stateless_uniform([4], seeds[5])), tf.int32),
        }

    def jitter(self, image, params):
        """The four operations on one image [H, W, 3] in [0, 1], in `params["order"]`."""
        operations = [
            lambda x: tf.image.adjust_brightness(x, params["brightness"]),
            lambda x: tf.image.adjust_contrast(x, params["contrast"]),
            lambda x: tf.image.adjust_saturation(x, params["saturation"]),
            lambda x: tf.image.adjust_hue(x, params["hue"]),
        ]
        for position in range(4):
            image = tf.switch_case(params["order"][position],
                                   [lambda op=op: tf.clip_by_value(op(image), 0.0, 1.0) for op in operations])
        return image

    def apply_one(self, image, seed):
        params = self.sample(seed)
        return tf.cond(params["apply"], lambda: self.jitter(image, params), lambda: image)

    def get_config(self):
        return {**super().get_config(), "strength": self.strength, "rate": self.rate}


@keras.saving.register_keras_serializable(package="psl_keras")
class RandomGrayscale(LadderLayer):
    """Grayscale (keras-cv's `Grayscale`, three equal channels) with probability `rate` (SimCLR: 0.2)."""

    def __init__(self, rate=0.2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        import keras_cv

        self.rate = float(rate)
        self.grayscale = keras_cv.layers.Grayscale(output_channels=3)

    def sample(self, seed):
        return {"apply": tf.random.stateless_uniform([], tf.cast(seed, tf.int64)) < self.rate}

    def augment(self, images, params):
        return where_selected(lambda x: self.grayscale.augment_images(x), images, params["apply"])

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package="psl_keras")
class RandomGaussianBlur(LadderLayer):
    """Gaussian blur with probability `rate` and a per-image sigma in `sigma` (pixels), SimCLR's ImageNet
    setting: p 0.5, sigma 0.1-2.0, a kernel of about `kernel_fraction` = 10% of the image side (odd); all
    picked images in one `gaussian_blur` call."""

    def __init__(self, rate=0.5, sigma=(0.1, 2.0), kernel_fraction=0.1, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = float(rate)
        self.sigma = tuple(float(s) for s in sigma)
        self.kernel_fraction = float(kernel_fraction)

    def radius(self, size):
        return max(1, int(size * self.kernel_fraction) // 2)

    def sample(self, seed):
        apply_seed, sigma_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        return {
            "apply": tf.random.stateless_uniform([], apply_seed) < self.rate,
            "sigma": tf.random.stateless_uniform([], sigma_seed, self.sigma[0], self.sigma[1]),
        }

    def blur(self, images, sigma):
        return gaussian_blur(images, sigma, self.radius(images.shape[1]))

    def augment(self, images, params):
        return where_selected(self.blur, images, params["apply"], params["sigma"])

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "sigma": self.sigma,
                "kernel_fraction": self.kernel_fraction}


@keras.saving.register_keras_serializable(package="psl_keras")
class RandomSobel(LadderLayer):
    """Sobel filtering (`sobel_magnitude`) with probability `rate`. Neither keras-cv nor Keras has it."""

    def __init__(self, rate=0.2, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.rate = float(rate)

    def sample(self, seed):
        return {"apply": tf.random.stateless_uniform([], tf.cast(seed, tf.int64)) < self.rate}

    def augment(self, images, params):
        return where_selected(sobel_magnitude, images, params["apply"])

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class AugmentationLadder:
    """Nested levels of augmentation layers: level k (1-based) is `levels[k - 1]`, each a prefix of the next.

    A level runs as `sample` (per example: the per-example layers at its head, then every `LadderLayer`'s
    parameters from the example's seed) and `augment` (per batch). Other Keras / keras-cv augmentation
    layers run on the batch as they are; their randomness is their own generator's, so a run that uses
    them repeats exactly only if it is never resumed.
    """

    def __init__(self, levels, size):
        self.levels = [list(level) for level in levels]
        self.size = int(size)
        for lower, upper in zip(self.levels, self.levels[1:]):
            if len(upper) < len(lower) or any(a is not b for a, b in zip(lower, upper)):
                raise ValueError("Each ladder level must start with every layer of the level below (T1 ⊆ T2 ⊆ T3).")
        for level in self.levels:
            flags = [getattr(layer, "per_example", False) for layer in level]
            if any(flags[i] and not flags[i - 1] for i in range(1, len(flags))):
                raise ValueError("Per-example layers (crop, colour jitter) must come first in a ladder level.")

    @property
    def num_levels(self):
        return len(self.levels)

    def level(self, level):
        return self.levels[level - 1]

    def sample(self, image, seed, level):
        """One view of one image: (float32 [size, size, 3] after the per-example layers, the batch layers'
        parameters) — all drawn from `seed`."""
        layers = self.level(level)
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), max(len(layers), 1))
        params = {}
        if not (layers and getattr(layers[0], "per_example", False)):  # no crop in this level: resize
            image = tf.image.convert_image_dtype(image, tf.float32) if image.dtype == tf.uint8 else image
            image = tf.image.resize(image, [self.size, self.size], antialias=True)
        for i, layer in enumerate(layers):
            if getattr(layer, "per_example", False):
                image = layer.apply_one(image, seeds[i])
            elif isinstance(layer, LadderLayer):
                params[str(i)] = layer.sample(seeds[i])
        return tf.clip_by_value(tf.ensure_shape(image, [self.size, self.size, 3]), 0.0, 1.0), params

    def augment(self, images, params, level):
        """The batch step on float32 images [B, size, size, 3] and the stacked per-image parameters."""
        for i, layer in enumerate(self.level(level)):
            if getattr(layer, "per_example", False):
                continue
            if isinstance(layer, LadderLayer):
                images = layer.augment(images, params[str(i)])
            else:
                images = tf.cast(layer(images, training=True), tf.float32)
        return images

    def describe(self, level):
        return " + ".join(type(layer).__name__ for layer in self.level(level))


def simclr_ladder(size, strength=1.0, crop_area=(0.08, 1.0), blur_rate=0.5, sobel_rate=0.2, seed=None):
    """PSL's contrastive ladder on SimCLR's augmentation (MoCo v2's with strength 0.5, crop area 0.2-1):

    T1 = random resized crop + flip (SimCLR: area 0.08-1, aspect 3/4-4/3, flip 0.5);
    T2 = T1 + colour jitter (strength s, p 0.8) + grayscale (p 0.2), SimCLR's colour distortion;
    T3 = T2 + Gaussian blur (p 0.5, sigma 0.1-2, kernel 10% of the side: SimCLR's ImageNet blur) + Sobel
         (p 0.2: the paper gives none; Sobel removes colour and intensity altogether, as strong as grayscale,
         so it gets grayscale's rate).
    """
    t1 = [RandomResizedCrop(size, area=crop_area, seed=seed)]
    t2 = t1 + [RandomColorJitter(strength, 0.8, seed=seed), RandomGrayscale(0.2, seed=seed)]
    t3 = t2 + [RandomGaussianBlur(blur_rate, seed=seed), RandomSobel(sobel_rate, seed=seed)]
    return AugmentationLadder([t1, t2, t3], size)


def blur_kernel_size(size, kernel_fraction=0.1):
    """The odd kernel side `RandomGaussianBlur` uses at image side `size` (for docs and tests)."""
    return 2 * max(1, int(size * kernel_fraction) // 2) + 1


__all__ = ["AugmentationLadder", "RandomColorJitter", "RandomGaussianBlur", "RandomGrayscale", "RandomResizedCrop",
           "RandomSobel", "LadderLayer", "gaussian_blur", "sobel_magnitude", "simclr_ladder", "blur_kernel_size", "where_selected"]
