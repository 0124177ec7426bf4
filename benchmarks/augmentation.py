"""Throughput of the contrastive augmentation ladders T1, T2, T3, all in one process (so the ratios hold on a
shared machine), against what a training step consumes.

  python benchmarks/augmentation.py [--batch 256] [--batches 4] [--sizes 224,32] [--markdown]

For each output size and level, examples per second (best of interleaved rounds) (each example yields two views) through tf.data:
- ours:          `psl_keras.data.augment` as the trainer runs it (per-example random draws and crop, then colour
                 jitter, grayscale, blur and Sobel on the batch, each on the views its draw picked);
- all keras-cv:  keras-cv's layers on batches (RandomCropAndResize, RandomFlip, RandomApply of RandomColorJitter,
                 Grayscale, RandomGaussianBlur; Sobel, which keras-cv lacks, is ours inside RandomApply);
- plain tf.image: SimCLR-style per-example functions (tf.image crop, flip, adjust_*, per-image blur and Sobel).
Then the consumption of the `cifar10_small` SimCLR preset's training step (ResNet-18 x0.5, batch 512):
stage 1 (the cheapest step, so the most examples per second) and E2E.

Source images are random uint8 arrays in memory: 256x320 for the 224-px output, 32x32 for 32 px.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from psl_keras.data import augment, transforms  # noqa: E402
from psl_keras.tasks import build_task  # noqa: E402

STRENGTH = {224: 1.0, 32: 0.5}


def source_images(size, count, seed=0):
    shape = (256, 320) if size > 64 else (32, 32)
    return np.random.default_rng(seed).integers(0, 256, (count, *shape, 3), dtype=np.uint8)


def throughput(dataset, batches, batch):
    """Examples per second over `batches` batches, after two warm-up batches."""
    iterator = iter(dataset.repeat())
    for _ in range(2):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        tf.nest.map_structure(lambda t: t.numpy(), next(iterator))
    return batches * batch / (time.perf_counter() - start)


def ours(images, size, level, batch):
    task = build_task("simclr", size, options={"strength": STRENGTH[size]})
    data = tf.data.Dataset.from_tensor_slices(images).enumerate()
    data = data.map(lambda i, image: task.preprocess(image, tf.stack([tf.constant(0, tf.int64), i]), level),
                    num_parallel_calls=tf.data.AUTOTUNE)
    data = data.batch(batch, drop_remainder=True)
    data = data.map(task.batch_transform(level), num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def keras_cv_pipeline(size, level, strength):
    import keras_cv

    cv = keras_cv.layers
    s = 0.8 * strength
    steps = [cv.RandomCropAndResize((size, size), crop_area_factor=(0.08, 1.0), aspect_ratio_factor=(3 / 4, 4 / 3)),
             cv.RandomFlip("horizontal")]
    if level >= 2:
        jitter = cv.RandomColorJitter(value_range=(0, 1), brightness_factor=s, contrast_factor=s,
                                      # x = f / (1 + f) for SimCLR's factor f in [1 - s, 1 + s]
                                      saturation_factor=((1 - s) / (2 - s), (1 + s) / (2 + s)),
                                      hue_factor=min(0.4 * strength, 1.0))
        steps += [cv.RandomApply(jitter, rate=0.8), cv.RandomApply(cv.Grayscale(output_channels=3), rate=0.2)]
    if level >= 3:
        kernel = augment.blur_kernel_size(size)
        steps += [cv.RandomApply(cv.RandomGaussianBlur(kernel, factor=(0.1, 2.0)), rate=0.5),
                  cv.RandomApply(keras_cv_sobel(), rate=0.2)]

    def pipeline(images):
        for step in steps:
            images = step(images, training=True)
        return images

    return pipeline


def keras_cv_sobel():
    """Our Sobel operation as a keras-cv image layer (keras-cv has none), for RandomApply."""
    import keras_cv

    class Sobel(keras_cv.layers.BaseImageAugmentationLayer):
        def augment_image(self, image, transformation=None, **kwargs):
            return transforms.sobel_magnitude(image[tf.newaxis])[0]

    return Sobel()


def all_keras_cv(images, size, level, batch):
    pipeline = keras_cv_pipeline(size, level, STRENGTH[size])
    data = tf.data.Dataset.from_tensor_slices(images).batch(batch, drop_remainder=True)

    def two_views(x):
        x = tf.cast(x, tf.float32) / 255.0
        return tf.stack([pipeline(x), pipeline(x)], axis=1)

    return data.map(two_views, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def plain_view(image, seed, size, level, strength):
    """One SimCLR view with tf.image, one image at a time (SimCLR's data_util arrangement)."""
    seeds = tf.random.experimental.stateless_split(seed, 12)
    u = lambda i: tf.random.stateless_uniform([], seeds[i])  # noqa: E731
    image = tf.image.convert_image_dtype(image, tf.float32)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0], min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, extent), [size, size])
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    if level >= 2:
        s = 0.8 * strength

        def jitter(x):
            x = tf.image.stateless_random_brightness(x, s, seeds[2])
            x = tf.image.stateless_random_contrast(x, 1 - s, 1 + s, seeds[3])
            x = tf.image.stateless_random_saturation(x, 1 - s, 1 + s, seeds[4])
            x = tf.image.stateless_random_hue(x, 0.2 * strength, seeds[5])
            return tf.clip_by_value(x, 0.0, 1.0)

        image = tf.cond(u(6) < 0.8, lambda: jitter(image), lambda: image)
        image = tf.cond(u(7) < 0.2, lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)),
                        lambda: image)
    if level >= 3:
        radius = augment.blur_kernel_size(size) // 2
        sigma = 0.1 + 1.9 * u(8)
        image = tf.cond(u(9) < 0.5, lambda: transforms.gaussian_blur(image[tf.newaxis], sigma[tf.newaxis], radius)[0],
                        lambda: image)
        image = tf.cond(u(10) < 0.2, lambda: transforms.sobel_magnitude(image[tf.newaxis])[0], lambda: image)
    return image


def plain_tf_image(images, size, level, batch):
    strength = STRENGTH[size]

    def example(i, image):
        first, second = tf.unstack(tf.random.experimental.stateless_split(tf.stack([tf.constant(0, tf.int64), i]), 2))
        return tf.stack([plain_view(image, first, size, level, strength),
                         plain_view(image, second, size, level, strength)])

    data = tf.data.Dataset.from_tensor_slices(images).enumerate()
    data = data.map(example, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def consumption(batch_size=512, steps=3):
    """Examples per second the cifar10_small SimCLR preset's train step takes, stage 1 and E2E."""
    from psl_keras import optim, stages
    from psl_keras.training import loop
    from psl_keras.backbones import backbone_blocks, build_backbone

    task = build_task("simclr", 32, head_hidden=256)
    backbone = build_backbone("resnet18", 32, stem="cifar", width=0.5)
    blocks = backbone_blocks(backbone)
    views = tf.random.uniform([batch_size, 2, 32, 32, 3], seed=0)
    batch = (views, tf.zeros([batch_size], tf.int64))
    result = {}
    for name, stage in (("stage 1", stages.stage_plan("psl", 3)[0]), ("E2E", stages.stage_plan("e2e", 3)[0])):
        head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], name=f"g_{name[0]}")
        model = stages.StageModel(blocks, stage, head, task, batch_size, weight_decay=1e-6)
        model.compile(optimizer=optim.build_optimizer("lars", 0.6))
        step = loop.distributed_step(tf.distribute.get_strategy(), model.train_step)
        step(batch)
        start = time.perf_counter()
        for _ in range(steps):
            float(step(batch)["loss"])
        result[name] = steps * batch_size / (time.perf_counter() - start)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--sizes", default="224,32")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurements per pipeline (best is kept)")
    parser.add_argument("--markdown", action="store_true", help="print the results as a Markdown table")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        # 32 px batches are fast to make: more of them for a stable number.
        batches = args.batches if size > 64 else args.batches * 8
        images = source_images(size, args.batch * 4)
        for level in (1, 2, 3):
            pipelines = {name: build(images, size, level, args.batch) for name, build in
                         (("ours", ours), ("all keras-cv", all_keras_cv), ("plain tf.image", plain_tf_image))}
            # Interleaved rounds, best of each: a busy moment of a shared machine hits one round, not one pipeline.
            numbers = {name: 0.0 for name in pipelines}
            for _ in range(args.rounds):
                for name, data in pipelines.items():
                    numbers[name] = max(numbers[name], throughput(data, batches, args.batch))
            rows.append((size, level, numbers))
            print(f"{size:>3} px T{level}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in numbers.items())
                  + f"  (ours / keras-cv {numbers['ours'] / numbers['all keras-cv']:.1f}x)", flush=True)
    steps = consumption() if "32" in args.sizes.split(",") else {}
    for name, rate in steps.items():
        print(f"cifar10_small SimCLR train step, {name}: {rate:,.0f} examples/s", flush=True)
    if args.markdown:
        print("\n| size | level | ours | all keras-cv | plain tf.image | ours / keras-cv |")
        print("|---|---|---|---|---|---|")
        for size, level, n in rows:
            print(f"| {size} px | T{level} | {n['ours']:,.0f} | {n['all keras-cv']:,.0f} | {n['plain tf.image']:,.0f} "
                  f"| {n['ours'] / n['all keras-cv']:.1f}x |")
        for name, rate in steps.items():
            print(f"| 32 px | train step ({name}) | {rate:,.0f} | | | |")


if __name__ == "__main__":
    main()
