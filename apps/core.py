"""What the demo's pages share: finding runs, loading each once (a bounded cache), reading input images and
nearest-neighbour retrieval over a gallery split with embeddings cached on disk.

Nothing here knows a pretext task: prediction tabs (apps/tabs/) bring that, one module per task.
"""

import collections
import dataclasses
import hashlib
import json
import os
import threading

import numpy as np

from psl_keras import data as data_lib
from psl_keras.data import images as images_lib
from psl_keras import rundir
from psl_keras.atomic import atomic_path
from psl_keras.backbones import BLOCK_NAMES
from psl_keras.errors import PSLError
from psl_keras.evaluation import knn as knn_lib
from psl_keras.evaluation.preprocessing import center_view

DISPLAY_SIDE = 160  # small model inputs are enlarged (nearest neighbour) to this side for display


def train_command(runs_dir):
    """The command that trains a run the page will find under `runs_dir`."""
    return (f"python train.py --task rotation --config cifar10_small --data_dir ../shared/tfds "
            f"--output_dir {os.path.join(runs_dir, 'rotation_psl')}")


# --- runs ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunInfo:
    """A run directory found under --runs_dir, and what its summary says."""

    name: str  # path relative to the runs directory
    path: str
    summary: dict
    problem: str = ""  # why it cannot be used ("" when it can)

    @property
    def config(self):
        return self.summary.get("config", {})

    @property
    def task(self):
        return self.config.get("task", "")

    @property
    def has_heads(self):
        stages = self.summary.get("stages", [])
        return bool(stages) and all("head_file" in s for s in stages)

    def row(self):
        """One line of the run picker."""
        c = self.config
        stages = self.summary.get("stages", [])
        pretext = " · ".join(f"S{s['stage']} {100 * s['final_accuracy']:.1f}%" for s in stages
                             if s.get("final_accuracy") is not None)
        knn = " · ".join(f"S{s['stage']} {s['last_block']} {100 * s['knn_accuracy']:.1f}%" for s in stages
                         if s.get("knn_accuracy") is not None)
        epochs = f"{len(stages)} x {c.get('epochs_per_stage', '?')}"
        if c.get("mode") == "e2e" and stages:
            epochs = f"{stages[0].get('epochs', '?')}"
        dataset = self.summary.get("dataset", {}).get("name") or c.get("dataset", "?")
        heads = "-" if self.problem else f"{len(stages)}" if self.has_heads else "none (retrieval only)"
        return [self.name, c.get("task", "?"), c.get("mode", "?"), f"{c.get('backbone', '?')} x{c.get('width', '?')}",
                dataset, epochs, pretext or "-", knn or "-", heads, self.problem or "ready"]


RUN_COLUMNS = ["run", "task", "mode", "backbone", "data", "epochs", "pretext accuracy", "kNN monitor", "heads",
               "status"]


def discover_runs(runs_dir):
    """Every run directory under `runs_dir` (recursively), sorted by name; unusable ones say why."""
    return [RunInfo(os.path.relpath(path, runs_dir), path, summary, problem)
            for path, summary, problem in rundir.scan_runs(runs_dir)]


def _signature(path):
    """Changes whenever a file of the run changes, so a retrained run is loaded again."""
    parts = []
    for name in sorted(os.listdir(path)):
        if name.endswith((".keras", ".json")):
            stat = os.stat(os.path.join(path, name))
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


class LoadedRun:
    """A run's models, each loaded (safe mode) the first time it is needed."""

    def __init__(self, info):
        if info.problem:
            raise PSLError(f"Run {info.name} cannot be used: {info.problem}.")
        self.info = info
        self.run = rundir.find_run(info.path, info.name)
        self._lock = threading.Lock()
        self._backbone = None
        self._stages = None
        self._task = None

    @property
    def backbone(self):
        with self._lock:
            if self._backbone is None:
                self._backbone = rundir.load_backbone(self.run)
            return self._backbone

    @property
    def image_size(self):
        from psl_keras.backbones import backbone_image_size

        return backbone_image_size(self.backbone)

    @property
    def task(self):
        with self._lock:
            if self._task is None:
                self._task = rundir.run_task(self.run)
            return self._task

    def stages(self):
        """[(StageHead, the backbone as that stage left it)]; [] for a run that kept no heads."""
        with self._lock:
            if self._stages is None:
                self._stages = rundir.load_stages(self.run)
            return self._stages


class RunCache:
    """At most `capacity` loaded runs, least recently used dropped first; a run whose files changed reloads."""

    def __init__(self, capacity=4):
        self.capacity = max(1, int(capacity))
        self._runs = collections.OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a run was loaded (for tests and the closing note)

    def get(self, info):
        key = (os.path.abspath(info.path), _signature(info.path) if os.path.isdir(info.path) else "")
        with self._lock:
            if key in self._runs:
                self._runs.move_to_end(key)
                return self._runs[key]
        loaded = LoadedRun(info)
        with self._lock:
            self._runs[key] = loaded
            self.loads += 1
            while len(self._runs) > self.capacity:
                self._runs.popitem(last=False)
        return loaded


# --- images -------------------------------------------------------------------------------------------


def read_upload(path, max_bytes):
    """An uploaded file as RGB uint8, or a PSLError that names the problem."""
    if not path:
        raise PSLError("No image: upload one, or pick a gallery image by its number.")
    return images_lib.read_image(path, max_bytes=max_bytes)


def model_input_side(image_size):
    """The side the demo brings an image to before the task's own preprocessing: the training data's size
    for small models (CIFAR: 32), the 256-for-224 resize for large ones."""
    return image_size if image_size <= 64 else round(image_size * 256 / 224)


def for_display(image):
    """A float [0, 1] or uint8 image as uint8, small ones enlarged without smoothing so pixels stay visible."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    side = min(image.shape[:2])
    if side < DISPLAY_SIDE:
        factor = int(np.ceil(DISPLAY_SIDE / side))
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return image


# --- retrieval ----------------------------------------------------------------------------------------


def parse_gallery(spec):
    """'cifar10:test' -> ('cifar10', 'test'); 'folder:/images' -> ('folder:/images', 'test')."""
    if spec.startswith(data_lib.FOLDER_PREFIX):
        return spec, "test"
    name, _, split = spec.partition(":")
    if not name:
        raise PSLError(f"--gallery={spec!r}: expected DATASET:SPLIT, e.g. cifar10:test, or folder:PATH.")
    return name, split or "test"


class Gallery:
    """The first `size` images of a labelled split: thumbnails for the page, embeddings cached on disk."""

    THUMBNAIL_SIDE = 96

    def __init__(self, spec, data_dir, size, cache_dir, download=False):
        self.spec = spec
        self.download = download
        self.name, self.split = parse_gallery(spec)
        self.data_dir = data_dir
        self.size = int(size)
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._source = None
        self._thumbnails = None

    @property
    def source(self):
        with self._lock:
            if self._source is None:
                self._source = data_lib.load_images(self.name, self.data_dir or None, self.split,
                                                    download=self.download).head(self.size)
            return self._source

    @property
    def labels(self):
        self._load_thumbnails()
        return self._labels

    def class_name(self, label):
        names = self.source.class_names
        return names[label] if 0 <= label < len(names) else str(label)

    def _load_thumbnails(self):
        with self._lock:
            if self._thumbnails is not None:
                return
        thumbnails, labels = [], []
        for image, label in self.source.as_dataset().as_numpy_iterator():
            side = min(image.shape[:2])
            thumbnails.append(images_lib.fit_square(image, min(side, self.THUMBNAIL_SIDE)))
            labels.append(int(label))
        with self._lock:
            self._thumbnails, self._labels = thumbnails, np.asarray(labels)

    def image(self, index):
        """Gallery image `index` (uint8) for use as a query or a pretext example."""
        self._load_thumbnails()
        count = len(self._thumbnails)
        if not 0 <= int(index) < count:
            raise PSLError(f"Gallery image #{index} does not exist: the gallery {self.spec} has images 0..{count - 1}.")
        return self._thumbnails[int(index)], int(self._labels[int(index)])

    def __len__(self):
        return self.source.num_examples

    def _cache_path(self, loaded, block):
        backbone = os.path.abspath(loaded.run.backbone_path)
        stat = os.stat(backbone)
        key = json.dumps([backbone, stat.st_size, stat.st_mtime_ns, block, self.spec, self.size,
                          os.path.abspath(self.data_dir) if self.data_dir else ""])
        return os.path.join(self.cache_dir, f"gallery_{hashlib.sha1(key.encode()).hexdigest()[:20]}.npy")

    def embeddings(self, loaded, block, on_progress=None):
        """L2-normalised pooled `block` features of every gallery image under `loaded`'s backbone.

        Computed once per (run files, block, gallery) and kept in the cache directory; a retrained run has
        other file times, hence another cache entry."""
        path = self._cache_path(loaded, block)
        if os.path.exists(path):
            try:
                cached = np.load(path)
                if cached.shape[0] == len(self):
                    return cached
            except (OSError, ValueError):
                pass  # damaged: computed again below
        features, _ = knn_lib.extract_features(loaded.backbone, self.source, loaded.image_size, [block],
                                               on_progress=on_progress)
        with atomic_path(path) as tmp:
            np.save(tmp, features[block])
        return features[block]


@dataclasses.dataclass
class Neighbours:
    indices: np.ndarray
    similarities: np.ndarray
    vote: int  # the kNN-vote label


def nearest(loaded, gallery, query_image, block, k, temperature=0.07, on_progress=None):
    """The k most similar gallery images to a query (cosine on pooled block features) and the weighted vote."""
    if block not in BLOCK_NAMES:
        raise PSLError(f"Block {block!r} is not one of {', '.join(BLOCK_NAMES)}.")
    bank = gallery.embeddings(loaded, block, on_progress)
    k = int(max(1, min(int(k), len(bank))))
    view = center_view(query_image, loaded.image_size)[None]  # the view the gallery was embedded with
    q = knn_lib.pooled_features(loaded.backbone, view, [block])[block].numpy()
    similarity = bank @ q[0]
    order = np.argsort(-similarity, kind="stable")[:k]
    labels = gallery.labels
    vote = int(knn_lib.knn_predict(bank, labels, q, int(labels.max()) + 1, k, temperature)[0])
    return Neighbours(order, similarity[order], vote)
