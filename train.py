"""Train a backbone with Progressive Stage-wise Learning: `python train.py --help`. The program is
psl_keras/cli/train.py, installed as `psl-train` by `pip install .`."""

from psl_keras.cli.train import run

if __name__ == "__main__":
    run()
