"""Image views for evaluation: a light training augmentation for probes and a deterministic center view."""

import tensorflow as tf

from psl_keras.data import transforms


def resize_shorter_side(image, size):
    return transforms.resize_shorter_side(image[tf.newaxis], size)[0]


def _resize_side(image_size):
    # ImageNet practice: shorter side 256 for 224 crops; small images are used at their own size.
    return image_size if image_size <= 64 else round(image_size * 256 / 224)


def center_view(image, image_size):
    """uint8 image -> float [image_size, image_size, 3]: shorter side resized, center crop."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    if tuple(image.shape[:2]) != (image_size, image_size):
        image = resize_shorter_side(image, _resize_side(image_size))
        shape = tf.shape(image)
        top, left = (shape[0] - image_size) // 2, (shape[1] - image_size) // 2
        image = image[top:top + image_size, left:left + image_size]
    return tf.ensure_shape(image, [image_size, image_size, 3])


def train_view(image, seed, image_size):
    """Random crop (4-px reflection padding for small images; from the 256/224 resize otherwise) and flip."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.convert_image_dtype(image, tf.float32)
    if image_size <= 64:
        if tuple(image.shape[:2]) != (image_size, image_size):
            image = tf.image.resize(image, [image_size, image_size])
        pad = max(1, image_size // 8)
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    else:
        image = resize_shorter_side(image, _resize_side(image_size))
    image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)
