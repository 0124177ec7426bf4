"""What every pretext task provides to the stage-wise trainer.

A task owns everything that differs between pretext tasks: its multi-level ladder (G1 easier than G2
easier than G3), the per-example input pipeline for a level, the stage head g_i and the loss. The trainer
only calls the methods below, so a new task is one new module plus a line in `psl_keras.tasks.TASKS`.
"""

import keras
from keras import layers, ops, tree


class Task:
    """Base class of pretext tasks. Subclasses set `name` and implement the abstract methods."""

    name = None
    num_levels = 3
    has_labels = True  # a classification task (a label per example); contrastive tasks compare views instead
    # Task-specific settings: name -> (default, help) or (default, help, allowed), allowed a
    # psl_keras.ranges.Range or a tuple of choices. train.py exposes each as --{task}_{name}, checked against
    # `allowed`; the constructor receives them as keyword arguments (0 / "" meaning "derive from the image size").
    OPTIONS = {}
    # Options whose default changed: name -> the value runs made before the option existed used. A saved run
    # that does not record such an option (resumed, reloaded by evaluate.py or the demo) keeps that value.
    LEGACY_OPTIONS = {}
    # What the task changes in a --config preset (psl_keras.config.PRESETS): preset name -> TrainConfig
    # values (task_options among them), laid over the preset's own; flags given explicitly still win.
    PRESETS = {}

    def __init__(self, image_size, head_hidden=256, sync_bn=False):
        self.image_size = int(image_size)
        self.head_hidden = int(head_hidden)
        self.sync_bn = bool(sync_bn)  # synchronise the head's BatchNorm across replicas, like the backbone

    # --- the ladder -----------------------------------------------------------------------------------
    def num_classes(self, level):
        """Number of classes of the task at `level` (1-based)."""
        raise NotImplementedError

    def chance_accuracy(self, level):
        """The pretext accuracy of guessing at random at `level` (None where accuracy has no fixed chance)."""
        return 1.0 / self.num_classes(level)

    def describe_level(self, level):
        """A short human-readable description of `level`, for logs and summary.json."""
        return f"{self.name} G{level}: {self.num_classes(level)} classes"

    # --- data: one implementation for tf.data (TensorFlow) and the accelerator (Keras on JAX) ------------------
    def sample(self, seed, level, image_shape):
        """Every random choice of one example at `level`, from its seed [2] (`transforms.uniform`, stateless,
        so a run is repeatable and resumable): a dict of tensors. `image_shape` is the image's (height, width)."""
        raise NotImplementedError

    def prepare(self, images, params, level):
        """(inputs, labels) of uint8 images [B, H, W, 3] of one size with their choices `params` (batched), in
        `keras.ops`: tf.data runs it per example (B = 1, the image at its own size), the JAX runtime on the
        batch it holds on the device."""
        raise NotImplementedError

    def finish(self, inputs, params, level):
        """A batch step on `prepare`'s inputs, run on each per-replica batch (tasks whose augmentation is cheaper
        on a batch of same-size views: the contrastive ladders). Default: none."""
        return inputs

    def has_batch_step(self):
        return type(self).finish is not Task.finish

    def preprocess(self, image, seed, level):
        """One decoded uint8 image [H, W, 3] -> (inputs, label), per example in tf.data; where the task has a
        batch step the inputs carry the example's choices for it."""
        params = self.sample(seed, level, ops.shape(image)[:2])
        inputs, labels = self.prepare(image[None], tree.map_structure(lambda p: p[None], params), level)
        if self.has_batch_step():
            return {"inputs": inputs[0], "params": params}, labels[0]
        return inputs[0], labels[0]

    def batch_transform(self, level):
        """What tf.data maps over each per-replica batch after `preprocess` (None: nothing)."""
        if not self.has_batch_step():
            return None
        return lambda inputs, labels: (self.finish(inputs["inputs"], inputs["params"], level), labels)

    def make_example(self, image, seed, level, label=None):
        """What the model sees for one image, with the label chosen by the caller (None: drawn from `seed`, as
        in training): a given rotation, a given permutation (the demo)."""
        params = self.sample(seed, level, ops.shape(image)[:2])
        if label is not None:
            if "label" not in params:
                raise NotImplementedError(f"Task {self.name} has no labels to choose.")
            params["label"] = ops.cast(label, "int32")
        params = tree.map_structure(lambda p: p[None], params)
        inputs, labels = self.prepare(image[None], params, level)
        return self.finish(inputs, params, level)[0], labels[0]

    def backbone_images(self, inputs):
        """Turns a batch of task inputs into the image batch the backbone sees (identity by default)."""
        return inputs

    # --- network --------------------------------------------------------------------------------------
    def build_head(self, level, feature_channels, name):
        """The stage head g_i: block features [N, h, w, C] -> logits [B, num_classes(level)].

        Default: global average pool, an MLP hidden layer with BatchNorm, then a linear classifier.
        """
        features = keras.Input((None, None, feature_channels), name=f"{name}_features")
        x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
        x = layers.Dense(self.head_hidden, use_bias=False, name=f"{name}_hidden")(x)
        x = layers.BatchNormalization(synchronized=self.sync_bn, name=f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        # float32 logits keep the softmax stable under mixed precision.
        logits = layers.Dense(self.num_classes(level), dtype="float32", name=f"{name}_logits")(x)
        return keras.Model(features, logits, name=name)

    # --- per-stage state (MoCo's key encoder and queue) ---------------------------------------------------
    def build_stage_state(self, stage_model):
        """A Keras layer holding state the task keeps during one stage besides the trained weights, or None.
        It is part of the stage's checkpoint."""
        return None

    def stage_outputs(self, stage_model, features, training=False):
        """What `objective` scores, from the frozen prefix's features (default: the stage's head outputs)."""
        return stage_model.trained_forward(features, training=training)

    def after_step(self, stage_model, outputs):
        """Runs after each optimizer step, in the replica context (MoCo: momentum update, enqueue)."""
        return None  # a statement: AutoGraph cannot convert a body that is a docstring alone, and warns

    # --- objective ------------------------------------------------------------------------------------
    def per_example_loss(self, labels, outputs):
        """Loss of each example, shape [B]; the trainer averages over the global batch."""
        return keras.losses.sparse_categorical_crossentropy(labels, outputs, from_logits=True)

    def per_example_correct(self, labels, outputs):
        """1.0 where the pretext prediction is right, shape [B] (the accuracy reported while training)."""
        predicted = ops.argmax(outputs, axis=-1)
        return ops.cast(ops.equal(ops.cast(labels, predicted.dtype), predicted), "float32")

    def objective(self, labels, outputs):
        """(loss of each example [B], 1.0 where it is solved [B]) for one replica's batch, in a replica context.

        Classification tasks score each example alone (the two methods above). Contrastive tasks couple the
        examples of the global batch here (negatives gathered from every replica)."""
        return self.per_example_loss(labels, outputs), self.per_example_correct(labels, outputs)

    def get_config(self):
        """The constructor's arguments (plus the task's name): `from_config(get_config())` rebuilds the task."""
        return {"name": self.name, "image_size": self.image_size, "head_hidden": self.head_hidden,
                "sync_bn": self.sync_bn}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.pop("name", cls.name)
        if name != cls.name:
            raise ValueError(f"A {name} configuration cannot build a {cls.name} task.")
        return cls(**config)
