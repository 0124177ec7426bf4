"""Evaluate trained backbones with the paper's protocols (linear probes on B1..B5, kNN, semi-supervised,
transfer). Not implemented yet: it arrives with the evaluation issue; this entry point says so clearly."""

import sys


def main():
    print("evaluate.py: not yet implemented. Trained backbones are in <run>/backbone.keras "
          "(load with keras.saving.load_model(path, safe_mode=True); outputs B1..B5).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
