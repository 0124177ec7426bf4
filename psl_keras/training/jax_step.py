"""A stage's training step under Keras on JAX: the counterpart of `StageModel.train_step`.

The same StageModel, task and loss; what differs is how gradients and state updates are taken. The step is one
pure function, compiled once per stage with `jax.jit`:

- `jax.value_and_grad` differentiates the stage's variables only (its trained blocks and head): the blocks
  before the window are inputs to the function, run in inference mode behind a stop-gradient, exactly as in
  the TF step, so they cannot change;
- BatchNorm's moving statistics and the optimizer's slots come out as new values (Keras' `StatelessScope`
  and `optimizer.stateless_apply`), and are written back to the variables only when asked (`write_back`), e.g.
  before a checkpoint or export;
- a task's stage state (MoCo's key encoder and queue) is updated by the task's own `after_step` in a second
  `StatelessScope` over the new weights, and comes out as new values the same way.

Imports no TensorFlow: it runs where only JAX is installed.
"""

import jax
import keras

from psl_keras.stages import step_sums


class JaxStageStep:
    """`step(state, inputs, labels) -> (state, sums)` for one stage; `state` = (trained, others, optimizer).

    `sums` are the batch's summed loss, correct predictions and example count, as the TF step returns them.
    """

    def __init__(self, stage_model, optimizer):
        self.model = stage_model
        self.optimizer = optimizer
        self.trained = list(stage_model.stage_variables)
        if not optimizer.built:
            optimizer.build(self.trained)
        trained_ids = {id(v) for v in self.trained}
        # Everything else the step reads: frozen blocks (all their weights), moving statistics, task state.
        self.others = [v for v in stage_model.variables if id(v) not in trained_ids]
        self.step = jax.jit(self._step, donate_argnums=(0,))

    def initial_state(self):
        """The variables' current values, copied: the step donates its state's buffers to its outputs, and the
        variables must keep theirs."""
        copy = jax.numpy.copy
        return ([copy(v.value) for v in self.trained], [copy(v.value) for v in self.others],
                [copy(v.value) for v in self.optimizer.variables])

    def write_back(self, state):
        """Copies a state's values into the Keras variables (for checkpoints, exports and evaluation). Copies:
        the next step donates the state's buffers."""
        trained, others, slots = state
        copy = jax.numpy.copy
        for variable, value in zip(self.trained + self.others + list(self.optimizer.variables),
                                   list(trained) + list(others) + list(slots)):
            variable.assign(copy(value))

    def write_back_iterations(self, state):
        """Copies only the optimizer's step counter (what the learning-rate schedule reads)."""
        for variable, value in zip(self.optimizer.variables, state[2]):
            if variable is self.optimizer.iterations:
                variable.assign(jax.numpy.copy(value))

    def _loss(self, trained, others, inputs, labels):
        model = self.model
        mapping = list(zip(self.trained, trained)) + list(zip(self.others, others))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss, outputs, per_example, correct = model.stage_loss(model.frozen_features(inputs), labels)
        # BatchNorm of the trained blocks updated its moving statistics inside the scope.
        return loss, (self._updated(scope, others), outputs, per_example, correct)

    def _updated(self, scope, others):
        """`others` with the values assigned inside `scope`."""
        new_others = []
        for variable, value in zip(self.others, others):
            updated = scope.get_current_value(variable)
            new_others.append(value if updated is None else updated)
        return new_others

    def _step(self, state, inputs, labels):
        trained, others, slots = state
        (_, (others, outputs, per_example, correct)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            trained, others, inputs, labels)
        trained, slots = self.optimizer.stateless_apply(slots, grads, trained)
        if self.model.task_state is not None:  # e.g. MoCo's momentum update and queue, from the new weights
            mapping = list(zip(self.trained, trained)) + list(zip(self.others, others))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                self.model.task.after_step(self.model, outputs)
            others = self._updated(scope, others)
        return (trained, others, slots), step_sums(per_example, correct)


def split_sharding(devices):
    """Arrays split along their first (batch) axis over `devices`."""
    import numpy as np

    mesh = jax.sharding.Mesh(np.array(list(devices)), ("batch",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))


def data_parallel(state, inputs, labels, devices=None):
    """Places a step's state (replicated) and batch (split along the batch axis) on several local devices.

    `jax.jit` then partitions the step over them (SPMD) while its math stays that of the whole batch, BatchNorm
    statistics included: a 2-device step gives the 1-device result up to float rounding (tested on 2 CPU
    devices, `XLA_FLAGS=--xla_force_host_platform_device_count=2`). The batch must divide by the device count.
    """
    import numpy as np

    devices = list(devices or jax.devices())
    if inputs is not None and len(inputs) % len(devices):
        raise ValueError(f"a batch of {len(inputs)} does not split over {len(devices)} devices")
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    split = split_sharding(devices)
    place = lambda x: None if x is None else jax.device_put(x, split)  # noqa: E731
    return jax.device_put(state, replicated), place(inputs), place(labels)
