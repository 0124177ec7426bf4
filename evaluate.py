"""Evaluate trained backbones with the paper's protocols: `python evaluate.py --help`. The program is
psl_keras/cli/evaluate.py, installed as `psl-evaluate` by `pip install .`."""

from psl_keras.cli.evaluate import run

if __name__ == "__main__":
    run()
