import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# CIFAR-10 prepared for TFDS beside the repository (../shared/tfds); tests that need it skip without it.
SHARED_TFDS = os.path.join(os.path.dirname(REPO), "shared", "tfds")
needs_cifar10 = pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED_TFDS, "cifar10")), reason="../shared/tfds/cifar10 is not present"
)


def synthetic_images(count=64, size=32, seed=0):
    """Smooth random colour images (so rotations and crops change them visibly)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3))
    images = np.kron(coarse, np.ones((1, size // 4, size // 4, 1)))
    return images.astype(np.uint8)


@pytest.fixture
def synthetic_source():
    from psl_keras.data import ImageSource

    images = synthetic_images(64)
    return ImageSource.from_arrays("synthetic", images, np.arange(64) % 4)


def tiny_config(tmp_path, **overrides):
    from psl_keras.config import TrainConfig

    values = dict(
        backbone="resnet18",
        width=0.125,
        image_size=32,
        head_hidden=16,
        batch_size=16,
        epochs_per_stage=1,
        steps_per_epoch=2,
        lr=0.05,
        output_dir=str(tmp_path / "run"),
    )
    values.update(overrides)
    return TrainConfig(**values)


def two_view_stage(task_name, options, batch=8, stage_index=1, head_name="g"):
    """(task, compiled StageModel of stage `stage_index` + 1, (views, labels)) for a two-view task on a batch of
    synthetic images made as the input pipeline makes them."""
    import keras
    import tensorflow as tf

    from psl_keras import stages
    from psl_keras.backbones import backbone_blocks, build_backbone
    from psl_keras.tasks import build_task

    keras.utils.set_random_seed(0)
    task = build_task(task_name, 32, head_hidden=16, options=options)
    blocks = backbone_blocks(build_backbone("resnet18", 32, width=0.125))
    stage = stages.stage_plan("psl", 3)[stage_index]
    head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], name=head_name)
    model = stages.StageModel(blocks, stage, head, task, batch, weight_decay=1e-4)
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
    examples = [task.preprocess(tf.constant(im), tf.constant([3, i], tf.int64), stage.level)
                for i, im in enumerate(synthetic_images(batch))]
    inputs = tf.nest.map_structure(lambda *t: tf.stack(t), *[e[0] for e in examples])
    views, labels = task.batch_transform(stage.level)(inputs, tf.stack([e[1] for e in examples]))
    return task, model, (views, labels)


def interrupt_after_batches(count):
    """A callback that stops training like Ctrl-C after `count` training batches (of the whole run)."""
    import keras

    class Interrupt(keras.callbacks.Callback):
        seen = 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == count:
                raise KeyboardInterrupt

    return Interrupt()
