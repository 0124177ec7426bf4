"""Callbacks the trainer attaches to every run."""

import csv
import os

import keras


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
        new_file = not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0
        with open(self.filename, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
