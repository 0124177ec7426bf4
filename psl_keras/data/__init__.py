"""Image sources (any TFDS image dataset, or a local folder) and the per-replica training pipeline.

A source yields (uint8 image [H, W, 3], int64 label) pairs; label is -1 where the data has none. Tasks turn
images into (inputs, label) pairs of their pretext task; this module does the rest: sharding across
workers, seeded shuffling, parallel preprocessing, per-replica batching and prefetching.
"""

import dataclasses
import os

import numpy as np

from psl_keras.data import arrays as arrays_lib
from psl_keras.errors import PSLError
from psl_keras.lazy import tf

FOLDER_PREFIX = "folder:"
ARRAYS_PREFIX = arrays_lib.PREFIX
# Splits of fixed-shape images up to this size are decoded once and kept in memory (CIFAR-10 train is
# 150 MB): a perfect per-epoch shuffle then costs a permutation instead of refilling a shuffle buffer.
IN_MEMORY_BYTES = 2 * 1024**3


@dataclasses.dataclass
class ImageSource:
    """One split of an image dataset and its facts.

    The examples are either `arrays` (uint8 images [N, H, W, 3], int64 labels [N]) held in memory, or a
    streaming `dataset` of (uint8 image [H, W, 3], int64 label) pairs.
    """

    name: str
    split: str
    num_examples: int
    num_classes: int  # 0 when the data carries no labels (labels are then -1)
    image_shape: tuple = None  # (H, W, 3) when every image has the same shape, else None
    dataset: object = None  # a tf.data.Dataset
    arrays: tuple = None
    multi_label: bool = False  # labels are multi-hot [num_classes] vectors (e.g. VOC2007's "labels")
    ids: object = None  # np.ndarray of example ids (str), or a callable that reads them, or None
    class_names: tuple = ()  # the name of each class id, where the data has them
    unreadable: dict = dataclasses.field(default_factory=dict)  # folder files left out: {path: why}
    # Streaming sources: the examples before image decoding, and the function that decodes such a dataset, so a
    # worker of a multi-worker run decodes only its shard (`shard`).
    encoded: object = None  # a tf.data.Dataset
    decoder: object = None

    def shard(self, count, index):
        """Examples index, index + count, ... in stored order, decoding only those where the source allows."""
        if count == 1:
            return self.as_dataset()
        if self.encoded is not None:
            return self.decoder(self.encoded.shard(count, index))
        return self.as_dataset().shard(count, index)

    def example_ids(self):
        """Each example's id (TFDS `id`/`file_name`, or the file path of a folder source), in stored order."""
        if callable(self.ids):
            self.ids = self.ids()
        if self.ids is None:
            raise PSLError(f"{self.name} carries no example ids (no 'id' or 'file_name' feature).")
        return self.ids

    def labels(self):
        """All labels in stored order, without decoding images where the source allows it."""
        if self.arrays is not None:
            return self.arrays[1]
        return np.concatenate([b for b in self.dataset.map(lambda _, label: label).batch(4096)
                               .as_numpy_iterator()])

    @classmethod
    def from_arrays(cls, name, images, labels=None, num_classes=None, split="train"):
        """An in-memory source, e.g. synthetic data in tests. Images of any dtype and 1, 3 or 4 channels are
        brought to RGB uint8 first (psl_keras.data.images.as_rgb_uint8: floats as [0, 1], or [0, 255] if larger)."""
        from psl_keras.data.images import as_rgb_uint8

        images = np.asarray(images)
        if images.ndim == 3:  # [N, H, W]: a batch of grey images
            images = images[..., None]
        if images.ndim != 4:
            raise PSLError(f"from_arrays needs images [N, H, W] or [N, H, W, C]; got shape {images.shape}.")
        images = as_rgb_uint8(images)
        labels = np.full(len(images), -1, np.int64) if labels is None else np.asarray(labels, np.int64)
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.size and labels.min() >= 0 else 0
        return cls(name, split, len(images), num_classes, tuple(images.shape[1:]), arrays=(images, labels))

    def as_dataset(self):
        """All examples in their stored order as a tf.data.Dataset of (image, label)."""
        if self.arrays is not None:
            return tf.data.Dataset.from_tensor_slices(self.arrays)
        return self.dataset

    def head(self, count):
        """The first `count` examples (all of them if `count` is 0 or larger than the source)."""
        if not count or count >= self.num_examples:
            return self
        if self.arrays is not None:
            arrays = tuple(a[:count] for a in self.arrays)
            return dataclasses.replace(self, arrays=arrays, num_examples=count)
        return dataclasses.replace(self, dataset=self.dataset.take(count), num_examples=count,
                                   encoded=self.encoded.take(count) if self.encoded is not None else None)

    def subset(self, indices):
        """The examples at `indices`: sliced if in memory, else filtered from the stream (stored order)."""
        indices = np.sort(np.asarray(indices, np.int64))
        ids = self.ids[indices] if isinstance(self.ids, np.ndarray) else None
        if self.arrays is not None:
            images, labels = self.arrays
            return dataclasses.replace(self, arrays=(images[indices], labels[indices]),
                                       num_examples=len(indices), ids=ids)
        keep = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(indices), tf.ones(len(indices), tf.bool)), False)
        data = self.dataset.enumerate().filter(lambda i, pair: keep.lookup(i)).map(lambda i, pair: pair)
        return dataclasses.replace(self, dataset=data, num_examples=len(indices), ids=ids, encoded=None,
                                   decoder=None)

    def in_memory(self):
        """This source with its examples decoded into memory (a no-op if they already are)."""
        if self.arrays is not None:
            return self
        images, labels = [], []
        for image_batch, label_batch in self.dataset.batch(4096).prefetch(2).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        arrays = (np.concatenate(images), np.concatenate(labels))
        return dataclasses.replace(self, dataset=None, arrays=arrays, num_examples=len(arrays[0]), encoded=None,
                                   decoder=None)


def default_data_dir():
    """Where TFDS looks by default: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _prepare_hint(name, data_dir):
    return (
        f"Prepare it on a machine with internet access and copy the folder, or prepare it in place:\n"
        f"  pip install importlib_resources && python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', data_dir='{data_dir}').download_and_prepare()\"\n"
        f"(datasets with manual downloads, such as imagenet2012, need their archives in "
        f"{os.path.join(data_dir, 'downloads', 'manual')} first), then pass --data_dir={data_dir}. "
        f"A folder of images works too: --dataset=folder:/path/to/images."
    )


def load_images(dataset, data_dir=None, split="train", on_bad_image="skip", min_side=0, verbose=True,
                download=False):
    """Loads one split of a TFDS image dataset by name, or of a local folder (`folder:PATH`).

    A TFDS dataset not prepared in `data_dir` is downloaded and prepared there if `download` (the CLIs'
    --download, on by default); where that is off or fails, the PSLError says how to prepare it offline.

    Folders only: `on_bad_image` (skip or error) for files that cannot be decoded; images with a shorter side
    below `min_side` are upscaled to it."""
    if dataset.startswith(FOLDER_PREFIX):
        return _load_folder(dataset[len(FOLDER_PREFIX):], split, on_bad_image, min_side, verbose)
    if dataset.startswith(ARRAYS_PREFIX):  # one split exported by psl_keras.data.arrays (`split` is the file's)
        arrays = arrays_lib.ArraySource.from_file(dataset[len(ARRAYS_PREFIX):])
        return ImageSource.from_arrays(arrays.name, arrays.images, arrays.labels, arrays.num_classes, arrays.split)
    return _load_tfds(dataset, data_dir or default_data_dir(), split, download, verbose)


def _load_tfds(name, data_dir, split, download=False, verbose=True):
    import tensorflow_datasets as tfds  # slow to import; only needed for TFDS sources

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise PSLError(
            f"Unknown TFDS dataset {name!r} (--dataset). Use a name from "
            f"`tfds.list_builders()`, e.g. cifar10 or imagenet2012, or --dataset=folder:/path/to/images."
        ) from None
    if not builder.is_prepared() and download:
        if verbose:
            print(f"Downloading and preparing {name} in {data_dir} (TFDS; --nodownload refuses)...")
        try:
            builder.download_and_prepare()
        except Exception as err:  # no network, a manual-download dataset, a full disk: all end the same way
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
            raise PSLError(
                f"Dataset {name!r} is not prepared in --data_dir={data_dir} and downloading it failed ({reason}). "
                + _prepare_hint(name, data_dir)
            ) from None
    if not builder.is_prepared():
        raise PSLError(
            f"Dataset {name!r} is not prepared in --data_dir={data_dir} (looked for {builder.data_dir}) and "
            f"--nodownload is set. " + _prepare_hint(name, data_dir)
        )
    splits = builder.info.splits
    try:  # a split name, or TFDS's slicing syntax: train[:10000], train[10%:], train[:5000]+test
        num_examples = splits[split].num_examples
    except (KeyError, ValueError, AssertionError):
        raise PSLError(
            f"Dataset {name!r} has no split {split!r}; it has: {', '.join(sorted(splits.keys()))} (slices such as "
            f"train[:10000] or train[:10%] work too)."
        ) from None
    features = builder.info.features
    image_key = next(
        (key for key, feature in features.items() if isinstance(feature, tfds.features.Image)), None
    )
    if image_key is None:
        raise PSLError(f"Dataset {name!r} has no image feature; psl-keras trains on image datasets.")
    multi_label = (
        "label" not in features
        and "labels" in features
        and isinstance(features["labels"], tfds.features.Sequence)
        and isinstance(features["labels"].feature, tfds.features.ClassLabel)
    )
    if multi_label:
        num_classes = features["labels"].feature.num_classes
        class_names = tuple(features["labels"].feature.names)
    else:
        num_classes = getattr(features["label"] if "label" in features else None, "num_classes", 0) or 0
        class_names = tuple(features["label"].names) if num_classes else ()
    image_shape = tuple(features[image_key].shape)
    if None in image_shape or image_shape[-1] not in (1, 3):
        image_shape = None
    has_label = num_classes > 0

    def to_pair(example):
        image = example[image_key]
        image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
        if multi_label:  # a set of class ids -> a multi-hot vector
            hot = tf.one_hot(tf.cast(example["labels"], tf.int32), num_classes, dtype=tf.int64)
            return image, tf.reduce_max(tf.concat([hot, tf.zeros([1, num_classes], tf.int64)], 0), axis=0)
        label = tf.cast(example["label"], tf.int64) if has_label else tf.constant(-1, tf.int64)
        return image, label

    data = builder.as_dataset(split=split, shuffle_files=False)
    data = data.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE)
    # The same records with the image still encoded: sharded before decoding in multi-worker training.
    encoded = builder.as_dataset(split=split, shuffle_files=False, decoders={image_key: tfds.decode.SkipDecoding()})

    def decoder(records):
        def decode(example):
            return to_pair({**example, image_key: features[image_key].decode_example(example[image_key])})

        return records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    id_key = next((k for k in ("id", "file_name", "image/filename") if k in features), None)

    def read_ids():  # reads the id column alone: images are not decoded
        if id_key is None:
            return None
        column = builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={image_key: tfds.decode.SkipDecoding()})
        column = column.map(lambda example: example[id_key]).batch(8192)
        return np.array([i.decode() for batch in column.as_numpy_iterator() for i in batch])

    source = ImageSource(name, split, num_examples, num_classes, image_shape, dataset=data,
                         multi_label=multi_label, ids=read_ids, class_names=class_names, encoded=encoded,
                         decoder=decoder)
    if image_shape is not None:
        source.image_shape = image_shape[:2] + (3,)
        if num_examples * int(np.prod(source.image_shape)) <= IN_MEMORY_BYTES:
            source = source.in_memory()
    return source


def _load_folder(root, split, on_bad_image="skip", min_side=0, verbose=True):
    """Images under `root` (or `root/split` if that exists); class = first sub-folder, sorted by name.

    Files that cannot be decoded are found first (psl_keras.data.folders.scan, cached) and left out, so the epoch
    length counts usable images only; with on_bad_image="error" they stop the run instead, named.
    """
    from psl_keras.data import folders

    if on_bad_image not in folders.ON_BAD_IMAGE:
        raise PSLError(f"--on_bad_image={on_bad_image!r}: must be one of {', '.join(folders.ON_BAD_IMAGE)}.")
    if not os.path.isdir(root):
        raise PSLError(f"--dataset=folder:{root}: no such directory.")
    split_root = os.path.join(root, split)
    if os.path.isdir(split_root):
        root = split_root
    files = folders.list_images(root)
    if not files:
        raise PSLError(f"--dataset=folder:{root}: no images ({', '.join(folders.EXTENSIONS)}) found under it.")
    unreadable = folders.scan(files, root, verbose=verbose)
    if unreadable:
        message = folders.describe_unreadable(unreadable, root)
        if on_bad_image == "error":
            raise PSLError(f"{message}. Remove or repair them, or pass --on_bad_image=skip to leave them out.")
        if verbose:
            print(f"warning: {message}. They are left out (--on_bad_image=skip).")
        files = [f for f in files if os.path.relpath(f, root) not in unreadable]
        if not files:
            raise PSLError(f"--dataset=folder:{root}: none of its {len(unreadable)} image files can be read.")
    class_of = [os.path.relpath(f, root).split(os.sep)[0] if os.sep in os.path.relpath(f, root) else None
                for f in files]
    classes = sorted({c for c in class_of if c is not None})
    if classes and all(c is not None for c in class_of):
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[c] for c in class_of]
    else:
        classes, labels = [], [-1] * len(files)

    def read(path):
        return folders.read_for_training(path.decode(), min_side)

    def decode(path, label):
        image = tf.numpy_function(read, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, [None, None, 3]), label

    def decoder(paths):
        # A file changed after the scan would otherwise stop a long run from deep inside tf.data.
        return paths.map(decode, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)

    paths = tf.data.Dataset.from_tensor_slices((files, tf.constant(labels, tf.int64)))
    ids = np.array([os.path.relpath(f, root) for f in files])
    return ImageSource(f"folder:{root}", split, len(files), len(classes), None, dataset=decoder(paths), ids=ids,
                       class_names=tuple(classes), unreadable=dict(unreadable), encoded=paths, decoder=decoder)


def steps_per_epoch(source, global_batch_size, cap=0):
    """Full global batches in one pass over `source` (the last partial batch is dropped), at most `cap` if set."""
    full = source.num_examples // global_batch_size
    if full < 1:
        raise PSLError(f"{source.name} {source.split} has {source.num_examples} examples, fewer than one batch of "
                       f"--batch_size={global_batch_size}.")
    return min(full, cap) if cap else full


def training_pipeline(source, preprocess, global_batch_size, seed, input_context=None, shuffle_buffer=10_000,
                      skip_steps=0, batch_transform=None):
    """Shards, shuffles, preprocesses and batches a source for one epoch.

    `preprocess(image, label, example_seed)` returns (inputs, target). `seed` fixes the shuffle order
    and every per-example random choice, so the same seed gives the same epoch. With an `input_context`
    (from `strategy.distribute_datasets_from_function`) each input pipeline reads its own shard and
    batches at the per-replica batch size. `skip_steps` drops the examples of that many global steps (cheaply,
    before preprocessing), so a run resumed mid-epoch sees exactly the batches it had not yet seen.
    `batch_transform(inputs, targets)`, if given, runs on each per-replica batch (a task's batched
    augmentation; its random choices must already be in the per-example outputs).
    """
    batch_size, pipeline_id, num_pipelines = global_batch_size, 0, 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        pipeline_id, num_pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
    if source.arrays is not None:
        order = np.random.default_rng(seed).permutation(source.num_examples)[pipeline_id::num_pipelines]
        images, labels = source.arrays
        data = tf.data.Dataset.from_tensor_slices((images[order], labels[order]))
    else:
        # Each pipeline decodes only its shard (the records are split before decoding where the source allows).
        data = source.shard(num_pipelines, pipeline_id)
        data = data.shuffle(min(shuffle_buffer, source.num_examples), seed=seed, reshuffle_each_iteration=False)
    data = data.enumerate()
    if skip_steps:
        data = data.skip(skip_steps * (global_batch_size // num_pipelines))

    def apply(index, pair):
        image, label = pair
        # Shards enumerate from 0, so the pipeline id keeps their example seeds apart.
        example_seed = tf.stack([tf.constant(seed * 1_000_003 + pipeline_id, tf.int64), index])
        return preprocess(image, label, example_seed)

    data = data.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    data = data.batch(batch_size, drop_remainder=True)
    if batch_transform is not None:
        data = data.map(batch_transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return data.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(source, view, global_batch_size, input_context=None):
    """Every example once, in stored order: `view(image)` -> model input, batched (last batch partial)."""
    batch_size, pipeline_id, num_pipelines = global_batch_size, 0, 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        pipeline_id, num_pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
    data = source.shard(num_pipelines, pipeline_id)
    data = data.map(lambda image, label: (view(image), label), num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def main(argv=None):
    """`python -m psl_keras.data`: exports a split of fixed-size images to an array dataset file (`arrays:FILE`),
    what the JAX trainer reads where TensorFlow is absent."""
    import argparse
    import sys
    import time

    parser = argparse.ArgumentParser(description="Export a split of fixed-size images to an array dataset file.")
    parser.add_argument("--dataset", required=True, help="TFDS name or folder:PATH")
    parser.add_argument("--split", default="train")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--limit", type=int, default=0, help="first N examples only (0: all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        source = load_images(args.dataset, args.data_dir or None, args.split)
        if args.limit:
            source = source.head(args.limit)
        source = source.in_memory()
        images, labels = source.arrays
        if images.ndim != 4:
            raise PSLError(f"{args.dataset} {args.split}: images of different sizes cannot be exported as one "
                           f"array; resize them first.")
        start = time.time()
        arrays_lib.save_arrays(args.out, images, labels, source.name, args.split, source.num_classes, source.class_names)
    except PSLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = os.path.getsize(args.out)
    print(f"{args.out}: {len(images)} images {images.shape[1:]}, {size / 2**20:.1f} MiB "
          f"({images.nbytes / size:.2f}x smaller than raw), {time.time() - start:.0f} s")
    return 0
