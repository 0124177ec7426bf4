"""psl-keras: Progressive Stage-wise Learning (Li et al., CVPR 2021) for Keras 3 on TensorFlow."""

__version__ = "0.1.0"


def installed_versions():
    """psl-keras's version and those of the frameworks it runs on that are installed, read from the package
    metadata (nothing is imported): what `--version` prints and every run's summary.json records."""
    from importlib import metadata

    versions = {"psl_keras": __version__}
    for name in ("keras", "tensorflow", "jax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
