"""Deliberate breakages of the method's invariants, and a runner that shows which test catches each one.

Every mutant is one small edit of the library (exact text replaced, so it applies to one place only) that
breaks an invariant listed in tests/README.md, plus the test files that guard that module. The runner
copies the working tree, applies one mutant at a time and runs those tests with `-x`; a mutant counts as
caught when a test fails (pytest exit code 1), not when the edit fails to import.

  python tests/mutants.py                      # every mutant, a Markdown table on stdout
  python tests/mutants.py --only S1,D2         # some of them
  python tests/mutants.py --tests tests        # against the whole suite instead of the guarding files
  python tests/mutants.py --tests_rev 3b48be7  # against the tests of an older commit (before/after)

`tests/test_mutants.py` checks that every edit still applies to the current source, so the catalogue
cannot silently drift away from the code it breaks.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    invariant: str  # what breaks, in the words of tests/README.md
    path: str  # file, relative to the repository
    edits: tuple  # ((old, new), ...): each old text occurs exactly once in the file
    tests: tuple  # the test files that guard this module


STAGES = ("tests/test_stages.py", "tests/test_distribute.py", "tests/test_training.py")
ROTATION = ("tests/test_rotation.py", "tests/test_stages.py")
JIGSAW = ("tests/test_jigsaw.py",)
SHORTCUTS = ("tests/test_shortcuts.py",)
DATA = ("tests/test_data.py", "tests/test_training.py")
OPTIM = ("tests/test_optim.py", "tests/test_training.py")
TRAINING = ("tests/test_training.py",)
LOOP = ("tests/test_loop.py", "tests/test_training.py")
EVALUATION = ("tests/test_evaluation.py", "tests/test_training.py", "tests/test_cli.py")
AUGMENT = ("tests/test_augment.py",)
CONTRASTIVE = ("tests/test_contrastive.py", "tests/test_golden.py")
MOCO = ("tests/test_mocov2.py",)
BYOL = ("tests/test_byol.py",)
JAX = ("tests/test_jax.py",)
IMAGES = ("tests/test_images.py", "tests/test_properties.py")
DEMO = ("tests/test_demo.py",)
REVNET = ("tests/test_revnet.py",)

MUTANTS = (
    # --- stages: isolation, frozen statistics, loss scaling, decay targets, the plan -------------------
    Mutant("S1", "weight decay on every stage variable (biases, BatchNorm), not kernels only", "psl_keras/optim.py",
           (("return [v for v in variables if len(v.shape) > 1]", "return list(variables)"),), STAGES),
    Mutant("S2", "loss averaged over the replica's batch instead of divided by the global batch",
           "psl_keras/stages.py",
           (("loss = ops.sum(per_example) / self.global_batch_size", "loss = ops.mean(per_example)"),), STAGES),
    Mutant("S3", "weight decay added once per replica (not divided by the replica count)", "psl_keras/optim.py",
           (("return 0.5 * weight_decay * ops.sum(squares) / replicas", "return 0.5 * weight_decay * ops.sum(squares)"),),
           STAGES),
    Mutant("S4", "decay coefficient doubled (wd * sum(w^2) instead of 0.5 * wd * sum(w^2))", "psl_keras/optim.py",
           (("return 0.5 * weight_decay * ops.sum(squares) / replicas", "return weight_decay * ops.sum(squares) / replicas"),),
           STAGES),
    Mutant("S5", "frozen blocks run BatchNorm in training mode (their statistics drift)", "psl_keras/stages.py",
           (("            x = block(x, training=False)\n        return ops.stop_gradient",
             "            x = block(x, training=True)\n        return ops.stop_gradient"),), STAGES),
    Mutant("S6", "frozen blocks' weights among the stage's trained variables", "psl_keras/stages.py",
           (("for layer in self.trained_blocks + [self.head]:",
             "for layer in self.forward_blocks + self.trained_blocks + [self.head]:"),), STAGES),
    Mutant("S7", "no stop-gradient at the stage input", "psl_keras/stages.py",
           (("return ops.stop_gradient(x) if self.forward_blocks else x", "return x"),), STAGES),
    Mutant("S8", "psl trains every stage on the hardest level (psl becomes sl)", "psl_keras/stages.py",
           (('level = num_levels if mode == "sl" else i', "level = num_levels"),), STAGES),
    Mutant("S9", "psl_f restricted to the window like psl", "psl_keras/stages.py",
           (('Stage(i, 1 if mode == "psl_f" else first, last, level)', "Stage(i, first, last, level)"),), STAGES),
    Mutant("S10", "gradient ascent (update with the wrong sign)", "psl_keras/stages.py",
           (("self.optimizer.apply_gradients(zip(gradients, variables))",
             "self.optimizer.apply_gradients(zip([-g for g in gradients], variables))"),), STAGES),
    # --- tasks: ladders, nesting, labels, shortcut guards ---------------------------------------------
    Mutant("T1", "rotation crop placed up to twice as far from the centre (it leaves the inscribed square)",
           "psl_keras/tasks/rotation.py",
           (('offsets = ops.cast(offsets, "float32") * (inscribed - window) / 2.0',
             'offsets = ops.cast(offsets, "float32") * (inscribed - window)'),), ROTATION),
    Mutant("T2", "rotation crops the whole side (reflected borders at 45 degrees)", "psl_keras/tasks/rotation.py",
           (('ops.cast(ops.minimum(in_shape[0], in_shape[1]), "float32") / math.sqrt(2.0)',
             'ops.cast(ops.minimum(in_shape[0], in_shape[1]), "float32")'),), ROTATION),
    Mutant("T3", "rotation label is not the angle applied", "psl_keras/tasks/rotation.py",
           (('return self.rotate(images, params["label"], level,',
             'return self.rotate(images, (params["label"] + 1) % self.num_classes(level), level,'),), ROTATION),
    Mutant("T4", "rotation angle step of R3 at every level", "psl_keras/tasks/rotation.py",
           (("(2.0 * math.pi / self.num_classes(level))", "(2.0 * math.pi / 8)"),), ROTATION),
    Mutant("T5", "jigsaw C_i generated per level, not prefixes of C3 (sets no longer nest)",
           "psl_keras/tasks/jigsaw.py",
           (("return self.permutations[: self.set_sizes[level - 1]]",
             "return permutation_set(self.set_sizes[level - 1], self.permutation_seed + level)"),), JIGSAW),
    Mutant("T6", "jigsaw tiles always at the top-left of their cells (no positional jitter)",
           "psl_keras/tasks/jigsaw.py",
           (("room = self.cell_size - self.tile_size + 1", "room = 1"),), JIGSAW),
    Mutant("T7", "jigsaw tiles not normalised one by one", "psl_keras/tasks/jigsaw.py",
           (("tiles = transforms.standardize(tiles, axis=(2, 3))",
             "tiles = transforms.standardize(tiles, axis=(1, 2, 3))"),), JIGSAW),
    Mutant("T8", "jigsaw permutations picked at random, not for maximal Hamming distance",
           "psl_keras/tasks/jigsaw.py",
           (("best = np.flatnonzero(min_distance == min_distance.max())", "best = np.flatnonzero(min_distance >= 0)"),),
           JIGSAW),
    Mutant("T9", "jigsaw puzzle shuffled by the inverse of its label's permutation", "psl_keras/tasks/jigsaw.py",
           (("return ops.take_along_axis(tiles, permutations[:, :, None, None, None], axis=1), labels",
             "return ops.take_along_axis(tiles, ops.argsort(permutations, axis=1)[:, :, None, None, None], axis=1), "
             "labels"),), JIGSAW),
    Mutant("T11", "jigsaw crops never flipped", "psl_keras/tasks/jigsaw.py",
           (('"flip": u[2] < 0.5,', '"flip": u[2] < 0.0,'),), JIGSAW),
    Mutant("T10", "jigsaw tiles of different puzzles mixed in the siamese batch", "psl_keras/tasks/jigsaw.py",
           (("return ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))",
             "return ops.reshape(ops.transpose(inputs, (1, 0, 2, 3, 4)), (-1, shape[2], shape[3], shape[4]))"),),
           JIGSAW),
    Mutant("T12", "jigsaw's gapped geometry at small images only (224-px puzzles solvable from their edges)",
           "psl_keras/tasks/jigsaw.py",
           (('if self.geometry == "gapped" and (small or gapped_sizes == "all") and not crop_size:',
             'if self.geometry == "gapped" and small and not crop_size:'),), JIGSAW + SHORTCUTS),
    Mutant("T13", "jigsaw's gapped cells barely larger than their tiles", "psl_keras/tasks/jigsaw.py",
           (("crop = 2 * tile_size * GRID", "crop = round(1.2 * tile_size) * GRID"),), SHORTCUTS),
    # --- RevNet: the recomputing backward pass --------------------------------------------------------
    Mutant("V1", "RevNet backward pass recomputes G from the wrong half", "psl_keras/backbones/revnet.py",
           (("g_out, g_backward = residual_vjp(unit.g, y1)", "g_out, g_backward = residual_vjp(unit.g, y2)"),),
           REVNET),
    Mutant("V2", "RevNet backward pass rebuilds a unit's input without subtracting G", "psl_keras/backbones/revnet.py",
           (("x2 = y2 - g_out", "x2 = y2 - 0 * g_out"),), REVNET),
    Mutant("V3", "RevNet's reversible units store activations although recompute is on",
           "psl_keras/backbones/revnet.py", (("if not self.recompute or not self.depth:", "if True:"),), REVNET),
    Mutant("V4", "RevNet backward pass recomputes from the variables, not the values it differentiates",
           "psl_keras/backbones/revnet.py",
           (("    with keras.StatelessScope(state_mapping=list(zip(variables, values))):\n        return",
             "    if True:\n        return"),), REVNET),
    Mutant("V5", "RevNet's residual stream in bfloat16 under mixed precision (its input no longer rebuilt exactly)",
           "psl_keras/backbones/revnet.py",
           (('''        kwargs.setdefault("dtype", keras.config.dtype_policy().variable_dtype)
        super().__init__(**kwargs)''', "        super().__init__(**kwargs)"),), REVNET),
    # --- data: order, seeding, sharding, batches, resume ---------------------------------------------
    Mutant("D1", "in-memory shuffle ignores the seed", "psl_keras/data/__init__.py",
           (("np.random.default_rng(seed).permutation", "np.random.default_rng(0).permutation"),), DATA),
    Mutant("D2", "streaming shuffle ignores the seed", "psl_keras/data/__init__.py",
           (("seed=seed, reshuffle_each_iteration=False", "seed=0, reshuffle_each_iteration=False"),), DATA),
    Mutant("D3", "every example of an epoch gets the same augmentation seed", "psl_keras/data/__init__.py",
           (("tf.constant(seed * 1_000_003 + pipeline_id, tf.int64), index])",
             "tf.constant(seed * 1_000_003 + pipeline_id, tf.int64), index * 0])"),), DATA),
    Mutant("D4", "input pipelines share their example seeds", "psl_keras/data/__init__.py",
           (("tf.constant(seed * 1_000_003 + pipeline_id, tf.int64)", "tf.constant(seed * 1_000_003, tf.int64)"),),
           DATA),
    Mutant("D5", "every input pipeline reads the same shard", "psl_keras/data/__init__.py",
           (("permutation(source.num_examples)[pipeline_id::num_pipelines]",
             "permutation(source.num_examples)[::num_pipelines]"),), DATA),
    Mutant("D6", "resume skips batches, not the examples of those batches", "psl_keras/data/__init__.py",
           (("data = data.skip(skip_steps * (global_batch_size // num_pipelines))", "data = data.skip(skip_steps)"),),
           DATA),
    Mutant("D7", "a short last batch is trained on (its loss under-weighted)", "psl_keras/data/__init__.py",
           (("data = data.batch(batch_size, drop_remainder=True)", "data = data.batch(batch_size)"),), DATA),
    # --- optim: schedules --------------------------------------------------------------------------------
    Mutant("O1", "step schedule never drops the learning rate", "psl_keras/optim.py",
           (("values = [base_lr * drop**k for k in range(len(pattern))]",
             "values = [base_lr for k in range(len(pattern))]"),), OPTIM),
    Mutant("O2", "step boundaries not scaled to the stage's length", "psl_keras/optim.py",
           (("boundaries.append(max(1, int(round(total_steps * elapsed / total))))",
             "boundaries.append(int(elapsed))"),), OPTIM),
    Mutant("O3", "cosine schedule spans twice the stage", "psl_keras/optim.py",
           (("CosineDecay(base_lr, max(total_steps, 1))", "CosineDecay(base_lr, max(2 * total_steps, 1))"),), OPTIM),
    Mutant("O4", "warm-up ignored", "psl_keras/optim.py", (("        if warmup_steps:", "        if False:"),), OPTIM),
    Mutant("O5", "nesterov flag ignored", "psl_keras/optim.py",
           (("momentum=momentum, nesterov=nesterov)", "momentum=momentum)"),), OPTIM),
    # --- training: per-stage schedules, levels, heads, data seeds, resume ----------------------------
    Mutant("R1", "one schedule over the whole run instead of one per stage", "psl_keras/training/trainer.py",
           (("total_steps = steps_per_epoch * epochs", "total_steps = steps_per_epoch * epochs * len(self.plan)"),),
           TRAINING),
    Mutant("R2", "every stage's data made for the hardest level", "psl_keras/training/trainer.py",
           (("task.preprocess(image, seed, stage.level)", "task.preprocess(image, seed, task.num_levels)"),),
           TRAINING),
    Mutant("R3", "every stage's head built for the hardest level", "psl_keras/training/trainer.py",
           (("stage.level, self.blocks[stage.last_block - 1]", "self.task.num_levels, self.blocks[stage.last_block - 1]"),),
           TRAINING),
    Mutant("R4", "the data order ignores the epoch (the same order every epoch)", "psl_keras/training/trainer.py",
           (("derived_seed(config.seed, DATA_SEED, stage.index, epoch)",
             "derived_seed(config.seed, DATA_SEED, stage.index)"),), TRAINING),
    Mutant("R5", "heads not initialised from their own seeds (resume builds other heads)", "psl_keras/training/trainer.py",
           (("keras.utils.set_random_seed(derived_seed(c.seed, HEAD_SEED, stage.index))", "pass"),), TRAINING),
    Mutant("R6", "optimizer state left out of the checkpoint", "psl_keras/training/trainer.py",
           (("head=model.head,\n                              optimizer=model.optimizer,", "head=model.head,"),), TRAINING),
    Mutant("R7", "a resumed epoch starts again from its first batch", "psl_keras/training/trainer.py",
           (("skip_steps=first_step)", "skip_steps=0)"),), TRAINING),
    Mutant("R8", "a kill inside an epoch's end callbacks loses its log row (no replay on resume)",
           "psl_keras/training/trainer.py", (("        if not state.epoch_end_pending:\n            return {}",
                                      "        if True:\n            return {}"),), TRAINING),
    Mutant("R9", "a replayed epoch end writes its log row twice", "psl_keras/training/callbacks.py",
           (("        self._drop_rows_from(epoch + 1)\n", ""),), TRAINING),
    Mutant("L1", "Ctrl-C right after a step loses that step on resume", "psl_keras/training/loop.py",
           (("raise Interrupted(i + 1) from None", "raise Interrupted(i) from None"),), LOOP),
    Mutant("L2", "epoch totals keep only the last step's sums", "psl_keras/training/loop.py",
           (("totals[k] = totals.get(k, 0.0) + v", "totals[k] = v"),), LOOP),
    # --- Keras on JAX: the step and the trainer -------------------------------------------------------
    Mutant("J1", "the JAX step differentiates every trainable variable, frozen blocks included",
           "psl_keras/training/jax_step.py",
           (("self.trained = list(stage_model.stage_variables)", "self.trained = list(stage_model.trainable_variables)"),),
           JAX),
    Mutant("J2", "JAX checkpoints leave out the optimizer state", "psl_keras/training/jax_runtime.py",
           ((""""head": model.head.weights,\n                                "optimizer": model.optimizer.variables, **extra}""",
             """"head": model.head.weights, **extra}"""),), JAX),
    Mutant("J3", "a JAX batch split over devices trains on the first device's share only", "psl_keras/training/jax_runtime.py",
           (("inputs, labels = jax.device_put(inputs, sharding), jax.device_put(labels, sharding)",
             "inputs, labels = inputs[: len(inputs) // len(self.devices)], labels[: len(labels) // len(self.devices)]"),),
           JAX),
    Mutant("J4", "a JaxTrainer built in Python records the TensorFlow backend (a TF resume is not refused)",
           "psl_keras/training/trainer.py",
           (('super().__init__(dataclasses.replace(config, backend="jax"), *args, **kwargs)',
             "super().__init__(config, *args, **kwargs)"),), JAX),
    Mutant("J5", "the JAX runtime gives every example of a batch the same seed (one view repeated)",
           "psl_keras/training/jax_runtime.py",
           (("seeds = rng.integers(0, 2**32, (len(ids), 2), dtype=np.uint32)",
             "seeds = np.repeat(rng.integers(0, 2**32, (1, 2), dtype=np.uint32), len(ids), axis=0)"),), JAX),
    # --- evaluation: what probes, kNN and fine-tuning see -------------------------------------------
    Mutant("E1", "probe backbone not frozen (trainable, BatchNorm in training mode)", "psl_keras/evaluation/linear.py",
           (("outputs = self.backbone(images, training=False)",
             "self.backbone.trainable = True; outputs = self.backbone(images, training=True)"),),
           EVALUATION),
    Mutant("E2", "probes pool globally instead of to ~9k values", "psl_keras/evaluation/linear.py",
           (("layers.AveragePooling2D(kernel, strides=stride),", "layers.GlobalAveragePooling2D(keepdims=True),"),),
           EVALUATION),
    Mutant("E3", "probe BatchNorm learns a scale and an offset", "psl_keras/evaluation/linear.py",
           (("layers.BatchNormalization(center=False, scale=False, momentum=0.9)",
             "layers.BatchNormalization(momentum=0.9)"),), EVALUATION),
    Mutant("E4", "probe pooling target of 4096 instead of 9216 values", "psl_keras/evaluation/linear.py",
           (("TARGET_DIMS = 9216", "TARGET_DIMS = 4096"),), EVALUATION),
    Mutant("E5", "kNN votes unweighted (temperature ignored)", "psl_keras/evaluation/knn.py",
           (("weights = tf.exp(top_sim / temperature)", "weights = tf.ones_like(top_sim)"),), EVALUATION),
    Mutant("E6", "kNN features not L2-normalised", "psl_keras/evaluation/knn.py",
           (("tf.math.l2_normalize(tf.reduce_mean(outputs[b], axis=[1, 2]), axis=-1)",
             "tf.reduce_mean(outputs[b], axis=[1, 2])"),), EVALUATION),
    Mutant("E7", "kNN monitor always reads B5, not the stage's last block", "psl_keras/evaluation/knn.py",
           (("""block = self.block or f"B{getattr(getattr(self.model, 'stage', None), 'last_block', 5)}\"""",
             'block = self.block or "B5"'),), EVALUATION),
    Mutant("E8", "evaluation view flipped", "psl_keras/evaluation/preprocessing.py",
           (("    return tf.ensure_shape(image, [image_size, image_size, 3])",
             "    return tf.ensure_shape(image[:, ::-1], [image_size, image_size, 3])"),), EVALUATION),
    Mutant("E9", "semi-supervised fine-tuning trains the new head only", "psl_keras/evaluation/protocols.py",
           (("        backbone.trainable = True", "        backbone.trainable = False"),), EVALUATION),
    Mutant("E10", "labelled subset not class-balanced", "psl_keras/evaluation/protocols.py",
           (("chosen.append(np.sort(rng.permutation(members)[:per_class]))",
             "chosen.append(np.sort(rng.permutation(members)[:per_class + c % 2]))"),), EVALUATION),
    Mutant("E11", "a continued probe's state leaves out the heads' BatchNorm statistics (a model's list of heads "
           "is not tracked by tf.train.Checkpoint)", "psl_keras/evaluation/protocols.py",
           (('saved=_training_state({**{f"head_{name}": head for name, head in zip(model.block_names, model.heads)},',
             'saved=_training_state({"model": model, **{},'),), EVALUATION),
    Mutant("E12", "probe heads initialised from the process's random state, not the evaluation seed",
           "psl_keras/evaluation/linear.py",
           (("GlorotUniform(\n                    derived_seed(seed, PROBE_HEAD_SEED, BLOCK_NAMES.index(name)))",
             "GlorotUniform(None)"),), EVALUATION),
    Mutant("C1", "NT-Xent negatives only from the replica's own batch", "psl_keras/distribute.py",
           (("    if context is None or context.num_replicas_in_sync == 1:\n        return values, 0",
             "    if True:\n        return values, 0"),), CONTRASTIVE),
    Mutant("C2", "an embedding counted as its own negative", "psl_keras/tasks/simclr.py",
           (("    logits = logits - 1e9 * ops.one_hot(", "    logits = logits - 0 * ops.one_hot("),), CONTRASTIVE),
    Mutant("C3", "rotation draws its examples differently than before (not bit-identical)", "psl_keras/tasks/rotation.py",
           (('"flip": u[1] < 0.5,', '"flip": u[1] >= 0.5,'),),
           ("tests/test_golden.py",)),
    Mutant("C4", "LARS adapts biases and BatchNorm vectors too", "psl_keras/optim.py",
           (("        if len(variable.shape) > 1:\n            weight_norm", "        if True:\n            weight_norm"),),
           OPTIM),
    Mutant("C5", "one blur sigma for the whole batch", "psl_keras/data/transforms.py",
           (('(2.0 * ops.square(ops.cast(sigma, "float32"))[:, None])',
             '(2.0 * ops.square(0 * ops.cast(sigma, "float32") + ops.cast(sigma, "float32")[0])[:, None])'),), AUGMENT),
    Mutant("C6", "colour operations always in one order", "psl_keras/data/augment.py",
           (('operation = params["order"][:, position]', 'operation = 0 * params["order"][:, position] + position'),),
           AUGMENT),
    Mutant("C7", "the key encoder copies the query encoder instead of averaging", "psl_keras/tasks/contrastive.py",
           (("k.assign(momentum * k + (1.0 - momentum) * q)", "k.assign(q)"),), MOCO),
    Mutant("C8", "the queue overwrites the same slots every step", "psl_keras/tasks/contrastive.py",
           (("lambda p: p.assign((p + count) % size)", "lambda p: p.assign(p)"),), MOCO),
    Mutant("C9", "MoCo's key encoder and queue left out of the checkpoint", "psl_keras/training/trainer.py",
           (('extra = {"task_state": model.task_state} if model.task_state is not None else {}', "extra = {}"),),
           MOCO),
    Mutant("C10", "MoCo's keys made from the query's own view (the positive pair is an image with itself)",
           "psl_keras/tasks/mocov2.py",
           (("keys = stage_model.task_state.keys(features[1::2])", "keys = stage_model.task_state.keys(features[0::2])"),),
           MOCO),
    Mutant("C11", "MoCo's key encoder normalises with its moving statistics (Keras 3: a frozen BatchNorm layer runs "
           "in inference mode), so shuffle BN does nothing", "psl_keras/tasks/contrastive.py",
           (("            for variable in key.weights:\n                variable.trainable = False",
             "            key.trainable = False"),), MOCO),
    Mutant("C12", "MoCo's key groups not shuffled (the batch cut in order)", "psl_keras/tasks/contrastive.py",
           (("order = self.shuffle_order(count) if groups > 1 else ops.arange(count)", "order = ops.arange(count)"),),
           MOCO),
    Mutant("J8", "MoCo's key encoder under JAX copies the query encoder instead of averaging",
           "psl_keras/tasks/contrastive.py",
           (("key_var.assign(momentum * key_var.value + (1.0 - momentum) * query_var.value)",
             "key_var.assign(query_var.value)"),), JAX),
    Mutant("J9", "the JAX step never updates a task's stage state (MoCo's key encoder and queue stay as built)",
           "psl_keras/training/jax_step.py",
           (("if self.model.task_state is not None:  # e.g. MoCo", "if False:  # e.g. MoCo"),), JAX),
    Mutant("B1", "BYOL aims each prediction at its own view's target, not the other view's", "psl_keras/tasks/byol.py",
           (("other = ops.reshape(ops.flip(ops.reshape(z, (-1, 2, dim)), axis=1), (-1, dim))", "other = z"),), BYOL),
    Mutant("B2", "BYOL's target network never follows the online network", "psl_keras/tasks/byol.py",
           (("    def after_step(self, stage_model, outputs):\n        stage_model.task_state.update()",
             "    def after_step(self, stage_model, outputs):\n        pass"),), BYOL),
    Mutant("B3", "BYOL's target mirrors the predictor too (the online network has no predictor of its own)",
           "psl_keras/tasks/byol.py",
           (('head.get_layer(f"{head.name}_projection").output', "head.output"),), BYOL),
    Mutant("C13", "SimCLR's two views drawn from one seed (identical views)", "psl_keras/tasks/contrastive.py",
           (("views = [self.ladder.sample(u[i], level, image_shape) for i in (0, 1)]",
             "views = [self.ladder.sample(u[i], level, image_shape) for i in (0, 0)]"),), ("tests/test_contrastive.py",)),
    # --- how often each augmentation fires (both ladders) ----------------------------------------------
    Mutant("A1", "grayscale (and Sobel) with probability 1 - p instead of p", "psl_keras/data/augment.py",
           (('return {"apply": u[0] < self.rate}', 'return {"apply": u[0] >= self.rate}'),), AUGMENT),
    Mutant("A2", "blur on every image (its rate ignored)", "psl_keras/data/augment.py",
           (('return {"apply": u[0] < self.rate, "sigma":', 'return {"apply": u[0] < 1.0, "sigma":'),), AUGMENT),
    Mutant("A3", "colour jitter on every image (its rate ignored)", "psl_keras/data/augment.py",
           (('return {"apply": u[0] < self.rate, "brightness":', 'return {"apply": u[0] < 1.0, "brightness":'),),
           AUGMENT),
    Mutant("A4", "crops never flipped", "psl_keras/data/augment.py",
           (('"flip": u[2 * ATTEMPTS + 2] < self.flip}', '"flip": u[2 * ATTEMPTS + 2] < 0.0}'),), AUGMENT),
    Mutant("A5", "Sobel at the blur's rate", "psl_keras/data/augment.py",
           (("RandomSobel(sobel_rate)]", "RandomSobel(blur_rate)]"),), AUGMENT),
    Mutant("A6", "every step on every view (the per-view draws ignored in the batch step)", "psl_keras/data/augment.py",
           (('return transforms.apply_where(self.transform, images, params["apply"], params)',
             "return self.transform(images, params)"),), AUGMENT),
    Mutant("A7", "the crop draws its area uniformly (not tf.image's height-uniform boxes)", "psl_keras/data/augment.py",
           (("h = low + ops.floor(u[ATTEMPTS:2 * ATTEMPTS] * (high - low + 1))",
             "h = ops.round(ops.sqrt((self.area[0] + (self.area[1] - self.area[0]) * u[ATTEMPTS:2 * ATTEMPTS]) "
             "* height * width / aspect))"),), AUGMENT),
    # --- schedules -------------------------------------------------------------------------------------
    Mutant("O6", "warm-up counted in steps of one epoch (warm-up epochs taken as steps)", "psl_keras/training/trainer.py",
           (("warmup_steps=int(c.warmup_epochs * steps_per_epoch),", "warmup_steps=int(c.warmup_epochs),"),),
           OPTIM + ("tests/test_contrastive.py",)),
    # --- reading images from the wild -----------------------------------------------------------------
    Mutant("I1", "EXIF orientation ignored (a sideways phone photo stays sideways)", "psl_keras/data/images.py",
           (("image = ImageOps.exif_transpose(image)", "image = image"),), IMAGES),
    Mutant("I2", "a large JPEG decoded at reduced size with width and height swapped", "psl_keras/data/images.py",
           (('image.draft("RGB", (int(width / scale), int(height / scale)))',
             'image.draft("RGB", (int(height / scale), int(width / scale)))'),), IMAGES),
    Mutant("I3", "an animation read at its last frame", "psl_keras/data/images.py",
           (("image.seek(0)  # animated", "image.seek(getattr(image, 'n_frames', 1) - 1)  # animated"),), IMAGES),
    Mutant("I4", "a large image shrunk to the decode side on its longer side", "psl_keras/data/images.py",
           (("ratio = decode_side / min(image.size)", "ratio = decode_side / max(image.size)"),), IMAGES),
    # --- evaluation and the demo --------------------------------------------------------------------------
    Mutant("E13", "kNN uses k - 1 neighbours", "psl_keras/evaluation/knn.py",
           (("top_sim, top_index = tf.math.top_k(similarity, k=k)", "top_sim, top_index = tf.math.top_k(similarity, k=max(k - 1, 1))"),),
           EVALUATION),
    Mutant("W1", "the demo's retrieval lists the least similar gallery images", "psl_keras/demo/core.py",
           (("order = np.argsort(-similarity, kind=\"stable\")[:k]", "order = np.argsort(similarity, kind=\"stable\")[:k]"),),
           DEMO),
)


def apply(mutant, root):
    """Applies a mutant's edits to the copy under `root`; raises ValueError if an edit no longer applies."""
    path = os.path.join(root, mutant.path)
    with open(path) as f:
        text = f.read()
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"{mutant.id}: {old!r} occurs {count} times in {mutant.path}, expected once")
        text = text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)


def _copy_tree(destination):
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(os.path.dirname(os.path.join(destination, name)) or destination, exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(destination, name))


def _use_tests_of(revision, root):
    """Replaces the copy's tests with those of an older commit (this catalogue stays)."""
    shutil.rmtree(os.path.join(root, "tests"))
    archive = subprocess.run(["git", "archive", revision, "tests"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", root], input=archive.stdout, check=True)
    shutil.copy2(os.path.abspath(__file__), os.path.join(root, "tests", "mutants.py"))


def failing_without_mutants(root, tests):
    """Tests that already fail on the unmutated copy (an older suite against today's code): deselected, so
    that they do not count as catching anything."""
    tests = [t for t in tests if os.path.exists(os.path.join(root, t))]
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", *tests], cwd=root, capture_output=True,
                            text=True)
    return [name.split(" ")[0] for name in re.findall(r"^FAILED (\S+)", result.stdout, re.MULTILINE)]


def run(mutant, root, tests=None, timeout=1800, deselect=()):
    """(status, first failing test, seconds) for one mutant: status is caught, survived or error."""
    tests = [t for t in (tests or mutant.tests) if os.path.exists(os.path.join(root, t))]
    if not tests:
        return "survived", "(no test file guards it)", 0.0
    path = os.path.join(root, mutant.path)
    with open(path) as f:
        original = f.read()
    apply(mutant, root)
    start = time.time()
    try:
        deselected = [arg for name in deselect for arg in ("--deselect", name)]
        result = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-x", "-q", *tests, *deselected], cwd=root,
                                capture_output=True, text=True, timeout=timeout)
    finally:
        with open(path, "w") as f:
            f.write(original)
    seconds = time.time() - start
    failed = re.findall(r"^FAILED (\S+)", result.stdout, re.MULTILINE)
    if result.returncode == 1 and failed:
        return "caught", failed[0].split(" ")[0], seconds
    if result.returncode == 0:
        return "survived", "", seconds
    return "error", result.stdout[-500:] + result.stderr[-500:], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated mutant ids")
    parser.add_argument("--tests", nargs="*", help="test paths to run instead of each mutant's own")
    parser.add_argument("--tests_rev", default="", help="run the tests of this git revision (before/after)")
    args = parser.parse_args()
    wanted = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = wanted - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="psl_mutants_") as root:
        _copy_tree(root)
        deselect = []
        if args.tests_rev:
            _use_tests_of(args.tests_rev, root)
            deselect = failing_without_mutants(root, sorted({t for m in MUTANTS for t in m.tests}))
            print(f"Deselected (they fail without any mutant): {', '.join(deselect) or 'none'}\n")
        print("| id | module | broken invariant | result | first failing test | s |")
        print("|---|---|---|---|---|---|")
        survived = 0
        for mutant in MUTANTS:
            if wanted and mutant.id not in wanted:
                continue
            status, test, seconds = run(mutant, root, args.tests, deselect=deselect)
            survived += status != "caught"
            module = mutant.path.replace("psl_keras/", "")
            print(f"| {mutant.id} | {module} | {mutant.invariant} | {status} | {test.replace('|', '/')} | "
                  f"{seconds:.0f} |", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
