"""What the demo's pages share: finding runs, loading each once (a bounded cache), reading input images and
nearest-neighbour retrieval over a gallery split with embeddings cached on disk.

Nothing here knows a pretext task: prediction tabs (tabs/) bring that, one module per task.
"""

import collections
import dataclasses
import hashlib
import json
import os
import threading

import numpy as np

from psl_keras import rundir
from psl_keras.atomic import atomic_path
from psl_keras.data import images as images_lib
from psl_keras.errors import PSLError

# TensorFlow and Keras are imported where a model first runs, so the page is served while they load.
BLOCK_NAMES = ("B1", "B2", "B3", "B4", "B5")
FOLDER_PREFIX = "folder:"

DISPLAY_SIDE = 160  # small model inputs are enlarged (nearest neighbour) to this side for display


def train_command(runs_dir, task="rotation", data_dir=""):
    """The command that trains a run of `task` the page will find under `runs_dir` (minutes on a laptop CPU)."""
    return (f"python train.py --task {task} --config cifar10_quick{f' --data_dir {data_dir}' if data_dir else ''} "
            f"--output_dir {os.path.join(runs_dir, f'{task}_psl')}")


def percent(fraction):
    """64.0%, and small ones with their digits (a jigsaw stage's 0.07% on 2,000 permutations)."""
    return f"{100 * fraction:.1f}%" if fraction >= 0.01 else f"{100 * fraction:.2f}%"


def chance_text(stage):
    """' (chance 50%)' for a stage result that records its chance accuracy, else ''."""
    chance = stage.get("chance_accuracy")
    return f" (chance {100 * chance:.3g}%)" if chance else ""


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
        pretext = " · ".join(f"S{s['stage']} {percent(s['final_accuracy'])}{chance_text(s)}" for s in stages
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


def check_runs_dir(runs_dir):
    """Refuses a --runs_dir that is a file (a folder that does not exist yet is fine: runs may come later)."""
    if os.path.exists(runs_dir) and not os.path.isdir(runs_dir):
        raise PSLError(f"--runs_dir={runs_dir} is a file. Give the folder that holds run directories (train.py's "
                       f"--output_dir is one of them), e.g. --runs_dir={os.path.dirname(runs_dir) or '.'}.")


def discover_runs(runs_dir):
    """Every run directory under `runs_dir` (recursively, `runs_dir` itself included), sorted by name; unusable
    ones say why. A run is named by its path under `runs_dir`, or by its folder's name when it is `runs_dir`."""
    def name(path):
        relative = os.path.relpath(path, runs_dir)
        return os.path.basename(os.path.abspath(path)) if relative == "." else relative

    return [RunInfo(name(path), path, summary, problem) for path, summary, problem in rundir.scan_runs(runs_dir)]


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
        self._predict = None  # compiled functions, made on first use
        self._embed = None

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

    def stage_probabilities(self, inputs):
        """Every stage head's softmax over its own level for one example of task inputs: one compiled call
        runs all stages (their backbones and heads), traced once per input shape."""
        import tensorflow as tf

        from psl_keras.stages import stage_logits

        stages, task = self.stages(), self.task
        with self._lock:
            if self._predict is None:
                self._predict = tf.function(lambda x: [tf.nn.softmax(stage_logits(backbone, head, task, x))
                                                       for head, backbone in stages])
        return [p.numpy()[0].astype(np.float64) for p in self._predict(tf.constant(inputs[None]))]

    def pooled_features(self, image):
        """{block: L2-normalised pooled features [C]} of one image, on the view the gallery was embedded with."""
        import tensorflow as tf

        from psl_keras.evaluation import knn as knn_lib
        from psl_keras.evaluation.preprocessing import center_view

        backbone, size = self.backbone, self.image_size
        with self._lock:
            if self._embed is None:
                self._embed = tf.function(lambda image: knn_lib.pooled_features(
                    backbone, center_view(image, size)[None], BLOCK_NAMES))
        return {b: f.numpy()[0] for b, f in self._embed(tf.constant(image)).items()}


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


def for_display(image, enlarge=True):
    """A float [0, 1] or uint8 image as uint8, small ones enlarged without smoothing so pixels stay visible
    (`enlarge=False`: as it is, for thumbnails the page itself scales up, pixelated)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    side = min(image.shape[:2])
    if enlarge and side < DISPLAY_SIDE:
        factor = int(np.ceil(DISPLAY_SIDE / side))
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return image


def png_data_uri(image):
    """A uint8 image as a PNG `data:` URI, for pictures written into the page itself."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- retrieval ----------------------------------------------------------------------------------------


def parse_gallery(spec):
    """'cifar10:test' -> ('cifar10', 'test'); 'folder:/images' -> ('folder:/images', 'test')."""
    if spec.startswith(FOLDER_PREFIX):
        return spec, "test"
    name, _, split = spec.partition(":")
    if not name:
        raise PSLError(f"--gallery={spec!r}: expected DATASET:SPLIT, e.g. cifar10:test, or folder:PATH.")
    return name, split or "test"


class Gallery:
    """The first `size` images of a split: thumbnails and captions for the page, embeddings cached on disk and,
    centred on the gallery's mean, in memory."""

    THUMBNAIL_SIDE = 96
    KEPT_BANKS = 16  # (run, block) embeddings kept in memory

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
        self._banks = collections.OrderedDict()
        self._run_locks = {}

    @property
    def source(self):
        with self._lock:
            if self._source is None:
                from psl_keras import data as data_lib

                self._source = data_lib.load_images(self.name, self.data_dir or None, self.split,
                                                    download=self.download).head(self.size)
            return self._source

    @property
    def labels(self):
        self._load_thumbnails()
        return self._labels

    @property
    def has_labels(self):
        return bool(len(self.labels)) and int(self.labels.max()) >= 0

    def class_name(self, label):
        names = self.source.class_names
        return names[label] if 0 <= label < len(names) else str(label)

    def caption(self, index):
        """What names gallery image `index` on the page: its class, and its file name in a folder gallery."""
        label = int(self.labels[index])
        ids = self.source.ids if isinstance(self.source.ids, np.ndarray) else None
        parts = ([self.class_name(label)] if label >= 0 else []) + (
            [os.path.basename(str(ids[index]))] if ids is not None and self.name.startswith(FOLDER_PREFIX) else [])
        return ", ".join(parts) or f"#{index}"

    def _load_thumbnails(self):
        with self._lock:
            if self._thumbnails is not None:
                return
        if self.source.arrays is not None and max(self.source.image_shape[:2]) <= self.THUMBNAIL_SIDE:
            # Small images held in memory (CIFAR): they are their own thumbnails.
            thumbnails, labels = self.source.arrays
        else:
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

        One pass through the backbone embeds every block (the forward computes them all anyway); each is kept
        in the cache directory per (run files, block, gallery), so a retrained run, with other file times, gets
        other entries. A run is embedded by one thread at a time: a request arriving while the start-up's
        background work embeds it waits for that result instead of computing it again."""
        with self._lock:
            run_lock = self._run_locks.setdefault(os.path.abspath(loaded.run.backbone_path), threading.Lock())
        with run_lock:
            cached = self._read_cached(loaded, block)
            if cached is not None:
                return cached
            from psl_keras.evaluation import knn as knn_lib

            features, _ = knn_lib.extract_features(loaded.backbone, self.source, loaded.image_size, BLOCK_NAMES,
                                                   batch_size=500, on_progress=on_progress)
            for name, values in features.items():
                with atomic_path(self._cache_path(loaded, name)) as tmp:
                    np.save(tmp, values)
            return features[block]

    def _read_cached(self, loaded, block):
        path = self._cache_path(loaded, block)
        try:
            cached = np.load(path)
            return cached if cached.shape[0] == len(self) else None
        except (OSError, ValueError):
            return None  # missing or damaged: computed (again)

    def bank(self, loaded, block, on_progress=None):
        """(the gallery's embeddings centred on their mean and L2-normalised again, that mean).

        Pooled post-ReLU features all lie in one orthant, so plain cosines crowd near 1 (at B5 every one read
        1.000); centred, they say which images are alike relative to the rest of the gallery."""
        key = self._cache_path(loaded, block)
        with self._lock:
            if key in self._banks:
                self._banks.move_to_end(key)
                return self._banks[key]
        features = self.embeddings(loaded, block, on_progress)
        mean = features.mean(axis=0)
        entry = (normalize(features - mean), mean)
        with self._lock:
            self._banks[key] = entry
            while len(self._banks) > self.KEPT_BANKS:
                self._banks.popitem(last=False)
        return entry


def normalize(vectors):
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


@dataclasses.dataclass
class Neighbours:
    indices: np.ndarray
    similarities: np.ndarray  # centred cosine similarity to the query
    vote: int  # the weighted kNN vote's label; None for a gallery without labels


def nearest(loaded, gallery, query_image, block, k, temperature=0.07, exclude=None, on_progress=None):
    """The k gallery images most similar to a query (centred cosine on pooled block features) and their
    weighted vote. `exclude`: the query's own gallery index, left out of its neighbours."""
    if block not in BLOCK_NAMES:
        raise PSLError(f"Block {block!r} is not one of {', '.join(BLOCK_NAMES)}.")
    bank, mean = gallery.bank(loaded, block, on_progress)
    query = normalize(loaded.pooled_features(query_image)[block] - mean)
    similarity = bank @ query
    if exclude is not None:
        similarity[int(exclude)] = -np.inf
    k = int(max(1, min(int(k), len(bank) - (exclude is not None))))
    order = np.argsort(-similarity, kind="stable")[:k]
    vote = None
    if gallery.has_labels:
        labels = gallery.labels[order]
        weights = np.exp(similarity[order] / temperature)
        known = labels >= 0
        if known.any():
            vote = int(np.argmax(np.bincount(labels[known], weights[known])))
    return Neighbours(order, similarity[order], vote)
