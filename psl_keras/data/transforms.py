"""Image transforms in `keras.ops`, written once for both input paths.

A task makes its examples with these functions: inside tf.data under the TensorFlow backend (one example at a
time, on an image of its own size; keras.ops are TensorFlow ops there), and on the accelerator under Keras on
JAX (a batch of same-size images, compiled). Images are float [B, H, W, C]; sizes may be dynamic under
TensorFlow. Every random choice comes from `uniform`, a stateless draw from one example's seed, so an example
is the same wherever and whenever it is made (a tf.data worker, a resumed run).
"""

import keras
from keras import ops, tree

LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 weights, those of tf.image.rgb_to_grayscale


def uniform(seed, shape, minval=0.0, maxval=1.0):
    """Uniforms of one example from its seed [2]. Keras' own random ops take a seed generator, not a tensor
    that differs per example, so this is the one place that calls the backend's stateless generator."""
    if keras.backend.backend() == "jax":
        import jax

        key = jax.random.wrap_key_data(jax.numpy.asarray(seed).astype("uint32"))
        return jax.random.uniform(key, tuple(shape), minval=minval, maxval=maxval)
    import tensorflow as tf

    return tf.random.stateless_uniform(shape, tf.cast(seed, tf.int64), minval, maxval)


def choice(u, count):
    """An integer uniform in [0, count) from uniforms `u` in [0, 1) (`count` may be a tensor)."""
    return ops.cast(ops.minimum(ops.floor(u * ops.cast(count, "float32")), ops.cast(count, "float32") - 1), "int32")


def to_float(images):
    """uint8 images -> float32 in [0, 1]; float images pass through."""
    images = ops.convert_to_tensor(images)
    return ops.cast(images, "float32") / 255.0 if images.dtype == "uint8" else ops.cast(images, "float32")


def per_image(values, rank=4):
    """Per-image values [B] shaped to broadcast over images [B, H, W, C]."""
    return ops.reshape(ops.cast(values, "float32"), (-1,) + (1,) * (rank - 1))


def select(chosen, changed, images):
    """`changed` where `chosen` [B] is true, else `images`."""
    return ops.where(ops.cast(per_image(chosen), "bool"), changed, images)


def apply_where(fn, images, chosen, params):
    """`fn(images, params)` for the images where `chosen` [B] is true, the others unchanged; `params` is a dict
    of per-image values. Under TensorFlow (tf.data) only the chosen images are computed: a gather and a
    scatter. A compiled JAX step needs static shapes, so there every image is computed and the chosen kept."""
    if keras.backend.backend() != "tensorflow":
        return select(chosen, fn(images, params), images)
    import tensorflow as tf

    index = tf.where(chosen)
    subset = tf.gather_nd(images, index)
    picked = tree.map_structure(lambda p: tf.gather_nd(p, index), params)
    # Some operations (a reflecting pad over zero images) fail on an empty batch: skip them then.
    changed = tf.cond(tf.shape(index)[0] > 0, lambda: tf.cast(fn(subset, picked), images.dtype), lambda: subset)
    return tf.tensor_scatter_nd_update(images, index, changed)


def _reflect(index, size):
    # Half-sample symmetric reflection (d c b a | a b c d | d c b a), as tf.image's REFLECT fill.
    index = ops.mod(index, 2 * size)
    return ops.where(index >= size, 2 * size - 1 - index, index)


def sample_bilinear(images, ys, xs):
    """Bilinear samples of images [B, H, W, C] at source coordinates `ys`, `xs` (broadcasting to [B, ...],
    e.g. [B, Ho, Wo]; pixel centres at integers) -> [B, ..., C]. Borders are reflected, so every sample is
    image content: a crop, a resize or a rotation alike."""
    y0, x0 = ops.floor(ys), ops.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    top = gather_pixels(images, y0, x0) * (1.0 - wx) + gather_pixels(images, y0, x0 + 1) * wx
    bottom = gather_pixels(images, y0 + 1, x0) * (1.0 - wx) + gather_pixels(images, y0 + 1, x0 + 1) * wx
    return top * (1.0 - wy) + bottom * wy


def gather_pixels(images, ys, xs):
    """The pixels of images [B, H, W, C] at integer rows `ys` and columns `xs` (broadcasting to [B, ...]),
    reflected at the borders -> [B, ..., C]: one gather."""
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    rank = max(len(ys.shape), len(xs.shape))
    base = ops.reshape(ops.arange(shape[0], dtype="int32"), (-1,) + (1,) * (rank - 1)) * (height * width)
    index = base + _reflect(ys, height) * width + _reflect(xs, width)
    return ops.take(ops.reshape(images, (-1, images.shape[-1])), index, axis=0)


def crop_resize(images, boxes, flips, size):
    """Each image's box (y, x, h, w) [B, 4] resized to size x size (bilinear, half-pixel centres, edges
    clamped to the box, as tf.image.resize of the slice), mirrored where `flips` [B] is 1."""
    boxes = ops.cast(boxes, "float32")
    y0, x0, h, w = (boxes[:, i:i + 1] for i in range(4))
    grid = ops.arange(size, dtype="float32")[None, :]
    ys = ops.clip((grid + 0.5) * h / size - 0.5, 0.0, h - 1.0) + y0  # [B, size]
    xs = ops.clip((grid + 0.5) * w / size - 0.5, 0.0, w - 1.0) + x0
    xs = ops.where(ops.cast(flips, "bool")[:, None], ops.flip(xs, axis=1), xs)
    return sample_bilinear(images, ys[:, :, None], xs[:, None, :])


def resize_shorter_side(images, size):
    """Resizes images [B, H, W, C] so that the shorter side is `size` (antialiased), keeping the aspect ratio."""
    height, width = scaled_shape(ops.shape(images)[1:3], size)
    if isinstance(height, int):
        return ops.image.resize(images, (height, width), antialias=True)
    import tensorflow as tf  # sizes known only at run time: tf.data, where keras.ops are TensorFlow's anyway

    return tf.image.resize(images, tf.stack([height, width]), antialias=True)


def scaled_shape(shape, size):
    """(height, width) after `resize_shorter_side(images of shape (height, width), size)`."""
    height, width = (ops.cast(side, "float32") for side in shape)
    ratio = size / ops.minimum(height, width)
    if isinstance(shape[0], int) and isinstance(shape[1], int):  # static: Python ints (JAX needs them)
        ratio = size / min(shape)
        return round(shape[0] * ratio), round(shape[1] * ratio)
    return ops.cast(ops.round(height * ratio), "int32"), ops.cast(ops.round(width * ratio), "int32")


def gaussian_blur(images, sigma, radius):
    """Per-image Gaussians of std `sigma` [B] (pixels), (2 radius + 1) taps, borders reflected: separable, one
    depthwise convolution per axis with the batch folded into the channels (each image its own kernel)."""
    taps = ops.arange(-radius, radius + 1, dtype="float32")
    kernels = ops.exp(-ops.square(taps)[None, :] / (2.0 * ops.square(ops.cast(sigma, "float32"))[:, None]))
    kernels = kernels / ops.sum(kernels, axis=1, keepdims=True)  # [B, 2r+1]
    shape = ops.shape(images)
    channels = shape[3]
    padded = ops.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="reflect")
    folded = ops.reshape(ops.transpose(padded, (1, 2, 0, 3)), (1, shape[1] + 2 * radius, shape[2] + 2 * radius, -1))
    per_channel = ops.transpose(ops.repeat(kernels, channels, axis=0))  # [2r+1, B*C]
    folded = ops.depthwise_conv(folded, per_channel[:, None, :, None], padding="valid")
    folded = ops.depthwise_conv(folded, per_channel[None, :, :, None], padding="valid")
    return ops.transpose(ops.reshape(folded, (shape[1], shape[2], -1, channels)), (2, 0, 1, 3))


def grayscale(images):
    """The luma of RGB images, in three equal channels."""
    luma = ops.sum(images * ops.convert_to_tensor(LUMA, "float32"), axis=-1, keepdims=True)
    return ops.repeat(luma, 3, axis=-1)


def sobel_magnitude(images):
    """The Sobel gradient magnitude of the luma, |G| / 4 clipped to [0, 1] (each Sobel kernel's positive taps
    sum to 4, so a full-range step edge maps to 1), in all three channels; borders reflected."""
    luma = ops.pad(grayscale(images)[..., :1], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="reflect")
    shape = ops.shape(images)

    def shift(dy, dx):
        return luma[:, 1 + dy:1 + dy + shape[1], 1 + dx:1 + dx + shape[2], :]

    gy = (shift(1, -1) + 2 * shift(1, 0) + shift(1, 1)) - (shift(-1, -1) + 2 * shift(-1, 0) + shift(-1, 1))
    gx = (shift(-1, 1) + 2 * shift(0, 1) + shift(1, 1)) - (shift(-1, -1) + 2 * shift(0, -1) + shift(1, -1))
    magnitude = ops.sqrt(ops.square(gy) + ops.square(gx) + 1e-12) / 4.0
    return ops.repeat(ops.clip(magnitude, 0.0, 1.0), 3, axis=-1)


def standardize(images, axis, eps=1e-3, mean=0.45, spread=0.225):
    """Each slice over `axis` standardised and mapped to `mean` +- `spread` (the [0, 1]-image range)."""
    centre = ops.mean(images, axis=axis, keepdims=True)
    return (images - centre) / ops.sqrt(ops.var(images, axis=axis, keepdims=True) + eps) * spread + mean
