"""RevNet-50's memory-saving backward pass: the training step's memory and speed with and without it.

Memory: XLA's analysis of the compiled training step (JAX) of E2E and of each PSL stage (the gradient of the
stage's blocks for a loss on its last block, the blocks before it forward only) at 224 px: temporary bytes,
and what the backward pass keeps from the forward one before XLA's fusion (the vjp's residuals, weights
included).
Time: images/s of the same step with and without recomputation, on the backend Keras runs on.

  KERAS_BACKEND=jax python benchmarks/revnet_memory.py --what memory [--width 1 --batch 8]
  python benchmarks/revnet_memory.py --what time [--width 1 --batch 8 --steps 5]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from psl_keras.backbones import backbone_blocks, build_backbone  # noqa: E402


STAGES = {"E2E": (1, 5), "S1": (1, 3), "S2": (2, 4), "S3": (3, 5)}  # (first trained block, last block)


def stage_loss(backbone, first, last):
    """(trained values, fixed values, images) -> (a loss on block `last`, the blocks' updated fixed values):
    blocks before `first` run forward only behind a stop-gradient, as in a PSL stage."""
    blocks = backbone_blocks(backbone)[:last]

    def loss(trained, fixed, images):
        x, new_fixed = images, []
        for index, block in enumerate(blocks, start=1):
            t, f = trained[index - 1], fixed[index - 1]
            x, f = block.stateless_call(t, f, x, training=index >= first)
            new_fixed.append(f)
            if index == first - 1:
                x = keras.ops.stop_gradient(x)
        return keras.ops.mean(keras.ops.square(x)), new_fixed

    return loss


def jax_memory(width, batch, size):
    import jax

    rows = {}
    for recompute in (False, True):
        keras.utils.set_random_seed(0)
        backbone = build_backbone("revnet50", size, width=width, recompute=recompute)
        blocks = backbone_blocks(backbone)
        trained = [[v.value for v in b.trainable_variables] for b in blocks]
        fixed = [[v.value for v in b.non_trainable_variables] for b in blocks]
        images = np.zeros((batch, size, size, 3), "float32")
        for name, (first, last) in STAGES.items():
            loss = stage_loss(backbone, first, last)
            step = jax.jit(jax.grad(loss, has_aux=True))
            analysis = step.lower(trained[:last], fixed[:last], images).compile().memory_analysis()
            # What the backward pass keeps from the forward one, before XLA's fusion: the leaves of the vjp
            # function (the stage's weights among them), found by tracing only.
            kept = jax.eval_shape(lambda t: jax.tree_util.tree_leaves(
                jax.vjp(lambda t: loss(t, fixed[:last], images)[0], t)[1]), trained[:last])
            rows[name, recompute] = (analysis.temp_size_in_bytes,
                                     sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in kept))
            print(f"{name} recompute={recompute}: {rows[name, recompute]}", file=sys.stderr)
    print(f"RevNet-50 x{width:g}, {size} px, batch {batch}, {jax.devices()[0].platform}\n")
    print("| step | kept for backward, stored | recomputing | ratio | compiled temporaries, stored | recomputing "
          "| ratio (= images per GiB) |\n|---|---|---|---|---|---|---|")
    for name in STAGES:
        (stored, kept_stored), (recomputed, kept_recomputed) = rows[name, False], rows[name, True]
        print(f"| {name} | {kept_stored / 2**20:,.0f} MiB | {kept_recomputed / 2**20:,.0f} MiB | "
              f"{kept_stored / kept_recomputed:.2f}x | {stored / 2**20:,.0f} MiB | {recomputed / 2**20:,.0f} MiB | "
              f"{stored / recomputed:.2f}x |")


def tf_time(width, batch, size, steps):
    import tensorflow as tf

    images = tf.random.uniform((batch, size, size, 3), seed=0)
    rates = {}
    for recompute in (False, True):
        keras.utils.set_random_seed(0)
        backbone = build_backbone("revnet50", size, width=width, recompute=recompute)
        optimizer = keras.optimizers.SGD(0.01)

        @tf.function
        def train_step(images):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(backbone(images, training=True)["B5"]))
            optimizer.apply_gradients(zip(tape.gradient(loss, backbone.trainable_variables),
                                          backbone.trainable_variables))
            return loss

        train_step(images)  # trace and warm up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            train_step(images).numpy()
            times.append(time.perf_counter() - start)
        rates[recompute] = batch / float(np.median(times))
    print(f"RevNet-50 x{width:g}, {size} px, batch {batch}, {keras.backend.backend()}: "
          f"{rates[False]:.1f} images/s storing activations, {rates[True]:.1f} recomputing "
          f"({rates[True] / rates[False]:.2f}x)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("memory", "time"), default="memory")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.what == "memory":
        if keras.backend.backend() != "jax":
            sys.exit("The memory analysis needs KERAS_BACKEND=jax.")
        jax_memory(args.width, args.batch, args.image_size)
    else:
        tf_time(args.width, args.batch, args.image_size, args.steps)


if __name__ == "__main__":
    main()
