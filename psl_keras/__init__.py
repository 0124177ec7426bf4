"""psl-keras: Progressive Stage-wise Learning (Li et al., CVPR 2021) for Keras 3 on TensorFlow."""

__version__ = "0.1.0"
