"""Seeds derived from the run's seed, one stream per purpose, so no two random choices ever share a seed."""

import numpy as np

# Purposes: the training data of a (stage, epoch), a stage head's initialisation, the probes' data of an epoch,
# a probe head's (or fine-tuning classifier's) initialisation.
DATA_SEED, HEAD_SEED, PROBE_DATA_SEED, PROBE_HEAD_SEED = 1, 2, 3, 4


def derived_seed(*parts):
    """A 31-bit seed from non-negative integers, e.g. (run seed, purpose, stage, epoch)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)
