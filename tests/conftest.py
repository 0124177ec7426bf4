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
