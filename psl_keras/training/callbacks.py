"""Callbacks the trainer attaches to every run."""

import csv
import os

import keras

from psl_keras.atomic import write_atomic


class RunCSVLogger(keras.callbacks.Callback):
    """Appends one row per epoch (across all stages) to a CSV file, flushing after each row.

    Unlike `keras.callbacks.CSVLogger` it keeps the columns it is given, without padding `val_` ones that
    a stage-wise run never produces, and it appends across stages and resumed runs.
    """

    def __init__(self, filename):
        super().__init__()
        self.filename = filename

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **(logs or {})}
        self._drop_rows_from(epoch + 1)
        new_file = not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0
        with open(self.filename, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def _drop_rows_from(self, epoch):
        """Removes rows of `epoch` and later, and a last row a kill cut short: a resumed run replays the
        epoch-end callbacks of an epoch whose callbacks a kill interrupted, and its row may be there already."""
        if not os.path.exists(self.filename):
            return
        with open(self.filename, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:] if line.endswith("\n") and _row_epoch(line) < epoch]
        if len(kept) < len(lines):
            write_atomic(self.filename, "".join(kept))


def _row_epoch(line):
    fields = next(csv.reader([line]), None)
    try:
        return int(fields[0])
    except (TypeError, IndexError, ValueError):  # not a row this logger wrote: dropped
        return float("inf")
