"""The CIFAR-10 study: does PSL help, at budgets where the answer means something?

Trains every run below, evaluates each one (kNN at k=200 and 20, all-blocks linear probes, and the probes again
at a longer budget to show the ranking has settled), and writes the tables of docs/results.md. Resumable at every
level: a finished run or evaluation is skipped, an interrupted run continues from its last checkpoint.

  python experiments/study_cifar10.py --data_dir ../shared/tfds --runs_dir runs/study            # everything
  python experiments/study_cifar10.py --step train --only rotation_psl_s1,rotation_e2e_s1     # some training
  python experiments/study_cifar10.py --step report                                          # tables so far
  python experiments/study_cifar10.py --tiny --runs_dir /tmp/study_tiny     # every step at a smoke budget (CI)

Runs (CIFAR-10 train, cifar10_small: CIFAR ResNet-18 at width 0.5, batch 512, SGD cosine lr 0.2):
  rotation  psl 3x5 epochs and e2e 15 epochs, seeds 0, 1, 2; sl and psl_f 3x5, seed 0; e2e at equal compute
            (the multiply-adds of psl's three stages: `flops.equal_compute_e2e_epochs`, 10.4 -> 10 epochs)
  jigsaw    psl 3x3 and e2e 9 epochs, seed 0, on the first 10,000 training images (a puzzle costs 9 tiles)
  simclr    psl 3x3 and e2e 9 epochs, seed 0
GPU budget (--gpu_epochs E, Keras on JAX, where TensorFlow is absent; the study's budget is E = 30):
  rotation  psl 3xE and e2e 3E epochs, seed 0; sl and psl_f 3xE; then psl and e2e seeds 1 and 2. Runs are named
            rotation_psl_s0_gpuE; train them with --step train on the JAX machine from an array file
            (--dataset arrays:FILE), then evaluate and report them here with the same --gpu_epochs.
  simclr    psl 3x(E/10) and e2e 3E/10, seed 0 (E = 30: simclr_psl_s0_gpu3)
  jigsaw    psl 3x(E/5) and e2e 3E/5, seed 0, every image of the array file (E = 30: jigsaw_psl_s0_gpu6)
Everything runs in this process through the library (`Trainer`, `evaluation.protocols`); `--print_commands`
prints the equivalent train.py / evaluate.py command lines.
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS = ("train", "evaluate", "report")
LINEAR_EPOCHS = 10  # the study's minimum; LONG_LINEAR_EPOCHS checks that the ranking no longer moves
LONG_LINEAR_EPOCHS = 20
KNN_K = (200, 20)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    task: str
    mode: str  # psl, sl, psl_f, e2e, or e2e_equal (e2e at the compute of psl's stages)
    seed: int = 0
    gpu_epochs: int = 0  # > 0: a GPU-budget run (Keras on JAX) with this many epochs per stage

    @property
    def name(self):
        return f"{self.task}_{self.mode}_s{self.seed}" + (f"_gpu{self.gpu_epochs}" if self.gpu_epochs else "")

    @property
    def table(self):
        """The report's table this run belongs to: one per task and budget."""
        return f"{self.task}, GPU budget 3x{self.gpu_epochs}" if self.gpu_epochs else self.task


# The rotation runs use the paper's bilinear resampling (`--rotation_resample bilinear`): seed 0 of psl and e2e
# were trained before the smoothed resampling became the default (the two measured within run-to-run noise at
# 3x1 epochs). Jigsaw runs with the gapped tiles (the default).
TASK_SETTINGS = {
    "rotation": {"knn_monitor": True, "task_options": {"resample": "bilinear"}},
    "jigsaw": {"split": "train[:10000]"},
    "simclr": {},
}
FULL = {"rotation": 5, "jigsaw": 3, "simclr": 3}  # epochs per stage; e2e gets the three stages' sum


def study_runs(seeds=(0, 1, 2)):
    """The study's runs, in the order they train (two seeds and the equal-compute run first: with them the
    headline comparison stands; more seeds narrow it)."""
    runs = []
    for seed in seeds[:2]:
        runs += [RunSpec("rotation", "psl", seed), RunSpec("rotation", "e2e", seed)]
    runs.append(RunSpec("rotation", "e2e_equal"))
    for seed in seeds[2:]:
        runs += [RunSpec("rotation", "psl", seed), RunSpec("rotation", "e2e", seed)]
    runs += [RunSpec("rotation", "sl"), RunSpec("rotation", "psl_f")]
    for task in ("simclr", "jigsaw"):
        runs += [RunSpec(task, "psl"), RunSpec(task, "e2e")]
    return runs


# At the GPU budget SimCLR and jigsaw train for a share of rotation's E epochs per stage: what 15 minutes of one
# H100 fitted beside rotation's third seed. A jigsaw step (nine tiles an image) took 40-60 ms on the H100 with six runs
# sharing it, a SimCLR step 140-230 ms (its warm-up schedule was read eagerly after every step, since fixed in the
# JAX trainer), a rotation step 30-45 ms. E = 30: SimCLR 3x3 (3x20 did not fit in those 15 minutes), jigsaw 3x6.
GPU_SHARE = {"rotation": 1.0, "simclr": 1 / 10, "jigsaw": 1 / 5}


def gpu_task_epochs(task, epochs):
    return max(1, round(epochs * GPU_SHARE[task]))


def gpu_runs(epochs, seeds=(0, 1, 2)):
    """The GPU budget's runs, in the order they train: the headline pair first, then the ablations, then seeds,
    then SimCLR and jigsaw (psl and e2e, seed 0)."""
    runs = [RunSpec("rotation", mode, seeds[0], epochs) for mode in ("psl", "e2e", "sl", "psl_f")]
    for seed in seeds[1:]:
        runs += [RunSpec("rotation", "psl", seed, epochs), RunSpec("rotation", "e2e", seed, epochs)]
    for task in ("simclr", "jigsaw"):
        runs += [RunSpec(task, mode, seeds[0], gpu_task_epochs(task, epochs)) for mode in ("psl", "e2e")]
    return runs


def train_settings(spec, args):
    """The explicit train.py settings of a run (on top of --config cifar10_small)."""
    settings = {"task": spec.task, "mode": "e2e" if spec.mode == "e2e_equal" else spec.mode, "seed": spec.seed,
                "data_dir": args.data_dir, "output_dir": os.path.join(args.runs_dir, spec.name),
                "checkpoint_every_steps": 20, **json.loads(json.dumps(TASK_SETTINGS[spec.task]))}
    if args.tiny:
        # A smoke budget through the same code: 2 steps of 16 images per epoch, a narrow network, a small bank.
        settings.update(epochs_per_stage=1, steps_per_epoch=2, batch_size=16, width=0.125, knn_bank_size=64,
                        split="train[:256]", knn_split="test[:64]", checkpoint_every_steps=0, head_hidden=16)
        if spec.task == "jigsaw":
            settings["task_options"] = {**settings.get("task_options", {}), "set_sizes": "8,16,32"}
    else:
        settings["epochs_per_stage"] = spec.gpu_epochs or FULL[spec.task]
    if spec.gpu_epochs:
        # Keras on JAX reads an array file and has no kNN monitor (evaluation here covers kNN); epoch-end
        # checkpoints suffice on a machine this fast.
        settings.update(backend="jax", dataset=args.dataset, knn_monitor=False, checkpoint_every_steps=0)
        settings.pop("split", None)  # the array file is the training data (jigsaw's CPU subset is for CPU time)
    if spec.mode == "e2e_equal":
        settings["e2e_epochs"] = equal_compute_epochs(settings)
    return settings


def equal_compute_epochs(settings):
    """E2E epochs with the multiply-adds of the psl run of the same settings (rounded to whole epochs)."""
    from psl_keras import flops, stages
    from psl_keras.backbones import build_backbone
    from psl_keras.config import resolve_config

    config = resolve_config("cifar10_small", {**settings, "mode": "psl"})
    backbone = build_backbone(config.backbone, config.image_size, width=config.width)
    plan = stages.stage_plan("psl", 3, stages.parse_windows(config.stage_windows))
    macs = flops.macs_per_block(backbone, config.image_size)
    epochs = flops.equal_compute_e2e_epochs(plan, {s.index: config.epochs_per_stage for s in plan}, macs)
    return max(1, round(epochs))


def _flag(name, value):
    """One absl flag as a shell word or two: --name / --noname for booleans, split specs like train[:10000]
    quoted."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name} '{value}'" if "[" in str(value) else f"--{name} {value}"


def command_line(script, settings, preset="cifar10_small"):
    task = settings.get("task")
    parts = [f"python {script}"] + ([f"--config {preset}"] if preset else [])
    for key, value in settings.items():
        if key == "task_options":
            parts += [_flag(f"{task}_{k}", v) for k, v in value.items()]
        else:
            parts.append(_flag(key, value))
    return " ".join(parts)


def eval_command_lines(args, specs):
    """evaluate.py commands that make the study's evaluations: its kNN, linear and longer linear probes, with the
    settings of `eval_settings` (the script runs the same protocols in this process and caches each run's results
    in RUNS/eval/NAME.json instead of one table per call)."""
    from psl_keras.evaluation.protocols import EvalConfig

    defaults = EvalConfig()

    def flags_of(config):
        parts = [f"--data_dir {config.data_dir}"]
        for field in dataclasses.fields(EvalConfig):
            value = getattr(config, field.name)
            if field.name in ("data_dir", "k", "resume_dir"):
                continue
            # Booleans always spelled out: evaluate.py's --download defaults to True, EvalConfig's to False.
            if isinstance(value, bool) or value != getattr(defaults, field.name):
                parts.append(_flag(field.name, ",".join(value) if isinstance(value, tuple) else value))
        return " ".join(parts)

    def runs(names):
        return ",".join(f"{n}={paths[n]}" for n in names)

    paths = {s.name: os.path.join(args.runs_dir, s.name) for s in specs}
    paths["random_init"] = os.path.join(args.runs_dir, "random_init.keras")
    names = list(paths)
    long_names = [s.name for s in specs if s.name in args.long_probes]
    cli_dir = os.path.join(args.runs_dir, "eval_cli")
    lines = [f"# {paths['random_init']}: written by --step evaluate (the backbone at its seed-0 initial weights)",
             f"python evaluate.py --probe knn --k {','.join(map(str, KNN_K))} {flags_of(eval_settings(args))} "
             f"--runs {runs(names)} --output_dir {cli_dir}/knn"]
    for key, epochs, selected in (("linear", LINEAR_EPOCHS, names), ("linear_long", LONG_LINEAR_EPOCHS, long_names)):
        if selected:
            lines.append(f"python evaluate.py --probe all-blocks {flags_of(eval_settings(args, epochs))} "
                         f"--runs {runs(selected)} --output_dir {cli_dir}/{key} --resume_dir {cli_dir}/state_{key}")
    return lines


# --- training -------------------------------------------------------------------------------------------
def train(spec, args):
    import keras

    from psl_keras import rundir
    from psl_keras.config import resolve_config
    from psl_keras.training.trainer import Trainer

    settings = train_settings(spec, args)
    out = settings["output_dir"]
    if rundir.read_summary(out) is not None:
        return "done"
    resume = rundir.has_started(out)
    print(f"\n=== {spec.name}: {'resuming' if resume else 'training'}\n{command_line('train.py', settings)}"
          + (" --resume" if resume else ""), flush=True)
    keras.backend.clear_session()
    if settings.get("backend") == "jax":
        from psl_keras.training.trainer import JaxTrainer as trainer_class
    else:
        trainer_class = Trainer
    trainer_class(resolve_config("cifar10_small", settings), resume=resume, verbose=args.verbose).train()
    return "trained"


# --- evaluation -----------------------------------------------------------------------------------------
def eval_settings(args, epochs=LINEAR_EPOCHS):
    from psl_keras.evaluation.protocols import EvalConfig

    if args.tiny:  # 1 probe epoch for the standard budget, 2 for the longer one
        return EvalConfig(data_dir=args.data_dir, train_split="train[:256]", eval_split="test[:64]",
                          epochs=1 if epochs == LINEAR_EPOCHS else 2, steps_per_epoch=2, batch_size=32)
    return EvalConfig(data_dir=args.data_dir, epochs=epochs)


def random_init_file(args):
    """A backbone of the study's architecture at its initial weights (seed 0): the reference row."""
    import keras

    from psl_keras.backbones import build_backbone
    from psl_keras.config import resolve_config

    path = os.path.join(args.runs_dir, "random_init.keras")
    if not os.path.exists(path):
        config = resolve_config("cifar10_small", train_settings(RunSpec("rotation", "psl"), args))
        keras.utils.set_random_seed(0)
        backbone = build_backbone(config.backbone, config.image_size, width=config.width)
        backbone.save(path + ".tmp.keras")
        os.replace(path + ".tmp.keras", path)
    return path


def evaluate(name, path, args, sources):
    """kNN and linear probes of one run (or .keras file), each cached in RUNS/eval/NAME.json."""
    from psl_keras import distribute
    from psl_keras.evaluation import protocols
    from psl_keras.rundir import parse_runs

    cache = os.path.join(args.runs_dir, "eval", f"{name}.json")
    results = json.load(open(cache)) if os.path.exists(cache) else {}
    run = parse_runs(f"{name}={path}")[0]
    strategy = distribute.make_strategy("default")
    todo = [("knn", LINEAR_EPOCHS), ("linear", LINEAR_EPOCHS)] + ([("linear_long", LONG_LINEAR_EPOCHS)]
                                                          if args.long_probes and name in args.long_probes else [])
    for key, epochs in todo:
        if key in results or key not in args.probes:
            continue
        started = time.time()
        # Probe training keeps its state per epoch here, so a process that ends mid-probe loses one epoch at most.
        state_dir = os.path.join(args.runs_dir, "eval", "state", f"{name}_{key}")
        config = dataclasses.replace(eval_settings(args, epochs), resume_dir=state_dir)
        print(f"\n=== {name}: {key}", flush=True)
        if key == "knn":
            by_k = protocols.knn_by_k(run, config, KNN_K, sources, verbose=args.verbose)
            result = {str(k): v for k, v in by_k.items()}
        else:
            result = protocols.all_blocks(run, config, strategy, sources, verbose=args.verbose)
            result = {b: result.get(b) for b in ("B1", "B2", "B3", "B4", "B5")}
        results[key] = {"result": result, "epochs": config.epochs, "seconds": time.time() - started}
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(cache + ".tmp", cache)
        shutil.rmtree(state_dir, ignore_errors=True)  # the result is cached; the training state is done with
    return results


# --- report ---------------------------------------------------------------------------------------------
def mean_spread(values):
    """'m ± s' (s: the sample standard deviation over seeds) from percentages, or 'm' for one value."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report(args, specs):
    """Markdown tables in the shape of the paper's Table 5, one per task, into RUNS/results.md."""
    from psl_keras import rundir

    rows_by_task = {}
    for spec in specs:
        evaluation_path = os.path.join(args.runs_dir, "eval", f"{spec.name}.json")
        summary = rundir.read_summary(os.path.join(args.runs_dir, spec.name))
        if summary is None:
            continue
        evaluation = json.load(open(evaluation_path)) if os.path.exists(evaluation_path) else {}
        rows_by_task.setdefault(spec.table, {}).setdefault(spec.mode, []).append((spec, summary, evaluation))
    if not rows_by_task:
        print(f"No finished run under {args.runs_dir} yet (a run is finished when it has summary.json): the "
              f"tables are empty. Train first: --step train --runs_dir {args.runs_dir}")
    random_eval = os.path.join(args.runs_dir, "eval", "random_init.json")
    random_row = json.load(open(random_eval)) if os.path.exists(random_eval) else None
    lines = ["# CIFAR-10 study: tables", "",
             "Percentages on the CIFAR-10 test split; mean ± standard deviation over seeds where a mode has several "
             "(n = seeds). Linear: all-blocks probes (pooled to ~9k dims, SGD lr 0.01, "
             f"{LINEAR_EPOCHS} epochs). kNN: weighted, T = 0.07, full train bank, best block. Pretext: training "
             "accuracy of each stage's head on its level in its last epoch. Train time: every stage's images over its "
             "measured images/s (the steps alone, without the kNN monitor or start-up; a shared machine's load "
             "moves it); images/s: the stages' mean of each stage's median step rate (each epoch's first step "
             "excluded).", ""]
    for task, by_mode in rows_by_task.items():
        lines += [f"## {task}", "",
                  "| mode | n | B1 | B2 | B3 | B4 | B5 | kNN k=200 (block) | kNN k=20 (block) | pretext per stage | "
                  "train time (min) | images/s | made on |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, entries in by_mode.items():
            epochs = "+".join(str(s["epochs"]) for s in entries[0][1]["stages"])
            cells = [f"{mode} ({epochs} ep)", str(len(entries))]
            for block in ("B1", "B2", "B3", "B4", "B5"):
                cells.append(mean_spread([100 * e["linear"]["result"][block] for _, _, e in entries
                                          if "linear" in e and e["linear"]["result"].get(block) is not None]))
            for k in KNN_K:
                cells.append(_best_knn([e for _, _, e in entries], k))
            pretext = [[100 * (s["final_accuracy"] or 0) for s in summary["stages"]] for _, summary, _ in entries]
            cells.append(" / ".join(mean_spread(list(stage)) for stage in zip(*pretext)))
            cells.append(mean_spread([_train_minutes(summary) for _, summary, _ in entries]))
            cells.append(mean_spread([_images_per_sec(summary) for _, summary, _ in entries]))
            cells.append("; ".join(sorted({_made_on(summary) for _, summary, _ in entries})))
            lines.append("| " + " | ".join(cells) + " |")
        if random_row:
            cells = ["random init", "1"]
            cells += [f"{100 * random_row['linear']['result'][b]:.1f}" if "linear" in random_row else "–"
                      for b in ("B1", "B2", "B3", "B4", "B5")]
            cells += [_best_knn([random_row], k) for k in KNN_K] + ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    plots = _plots(args, rows_by_task, random_row)
    if plots:
        lines += ["Plots (accuracy by block, mean over seeds): " + ", ".join(
            f"`{os.path.relpath(p, args.runs_dir)}`" for p in sorted(plots) if p.endswith(".png")), ""]
    long_rows = _long_probe_rows(args, specs)
    if long_rows:
        lines += ["## Linear probes at the standard and a longer budget: does the ranking of blocks move?", "",
                  "| run | epochs | B1 | B2 | B3 | B4 | B5 | best block |", "|---|---|---|---|---|---|---|---|"] + long_rows
    os.makedirs(args.runs_dir, exist_ok=True)
    path = os.path.join(args.runs_dir, f"results{_suffix(args)}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _suffix(args):
    """The GPU budget's tables and plots go beside the CPU study's, not over them."""
    return f"_gpu{args.gpu_epochs}" if args.gpu_epochs else ""


def _plots(args, rows_by_task, random_row):
    """evaluate.py's tables and plots (psl_keras.evaluation.report) of each task: linear and kNN by block, a line
    per mode (mean over seeds) and the random-init reference."""
    from psl_keras.evaluation import report as report_lib

    tables = {}
    for task, by_mode in rows_by_task.items():
        for key, title, pick in (("linear", "linear probe top-1 (%)", lambda e: e["linear"]["result"]),
                                 ("knn_k200", "kNN k=200 top-1 (%)", lambda e: e["knn"]["result"]["200"])):
            rows = []
            for mode, entries in by_mode.items():
                results = [pick(e) for _, _, e in entries if key.split("_")[0] in e]
                if results:
                    rows.append({"run": f"{mode} (n={len(results)})", **{
                        b: statistics.mean(r[b] for r in results) for b in ("B1", "B2", "B3", "B4", "B5")}})
            if random_row and key.split("_")[0] in random_row:
                rows.append({"run": "random init", **pick(random_row)})
            if rows:
                name = task.split(",")[0]  # "rotation, GPU budget 3x30" -> rotation (its own plots folder)
                tables[f"{name}_{key}"] = {"title": f"{task}: {title} by block, CIFAR-10 test", "rows": rows,
                                           "columns": ["B1", "B2", "B3", "B4", "B5"]}
    if not tables:
        return []
    plots_dir = os.path.join(args.runs_dir, f"plots{_suffix(args)}")
    return list(report_lib.write_report(plots_dir, tables, {"study": "cifar10"}).values())


def _best_knn(evaluations, k):
    """Mean ± spread of the best block's kNN accuracy (the block best on the mean), e.g. '44.1 ± 0.3 (B5)'."""
    per_block = {}
    for e in evaluations:
        for block, value in (e.get("knn", {}).get("result", {}).get(str(k)) or {}).items():
            per_block.setdefault(block, []).append(100 * value)
    if not per_block:
        return "–"
    block = max(per_block, key=lambda b: statistics.mean(per_block[b]))
    return f"{mean_spread(per_block[block])} ({block})"


def _train_minutes(summary):
    """Minutes of training steps: each stage's images over its measured images/s. A run resumed across
    processes records the wall time of its last process only, so wall time cannot be summed; the rate can."""
    batch = summary["config"]["batch_size"]
    minutes = 0.0
    for stage in summary["stages"]:
        if not stage.get("images_per_sec"):
            return None
        minutes += stage["epochs"] * stage["steps_per_epoch"] * batch / stage["images_per_sec"] / 60
    return minutes


def _made_on(summary):
    """'tensorflow, 2-core CPU' / 'jax, 1 GPU (NVIDIA H100)': the backend and machine a run was trained on."""
    machine = summary.get("machine")
    if not machine:  # runs from before summary.json recorded it
        return f"{summary['config'].get('backend', 'tensorflow')}, machine not recorded"
    accelerators = machine.get("accelerators") or []
    where = f"{len(accelerators)} accelerator(s) ({', '.join(accelerators)})" if accelerators else \
        f"{machine.get('cpu_cores')}-core CPU"
    return f"{machine.get('backend')}, {where}"


def _images_per_sec(summary):
    rates = [s["images_per_sec"] for s in summary["stages"] if s.get("images_per_sec")]
    return statistics.mean(rates) if rates else None


def _long_probe_rows(args, specs):
    rows = []
    for spec in specs:
        path = os.path.join(args.runs_dir, "eval", f"{spec.name}.json")
        evaluation = json.load(open(path)) if os.path.exists(path) else {}
        if "linear_long" not in evaluation:
            continue
        for key in ("linear", "linear_long"):
            result = evaluation[key]["result"]
            best = max(result, key=lambda b: result[b] or 0)
            rows.append(f"| {spec.name} | {evaluation[key]['epochs']} | "
                        + " | ".join(f"{100 * result[b]:.1f}" for b in ("B1", "B2", "B3", "B4", "B5"))
                        + f" | {best} |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="../shared/tfds")
    parser.add_argument("--runs_dir", default="runs/study")
    parser.add_argument("--step", default="train,evaluate,report", help=f"comma-separated: {', '.join(STEPS)}")
    parser.add_argument("--only", default="", help="run names, comma-separated (default: all of the study; "
                                                   "random_init names the random-init reference's evaluation)")
    parser.add_argument("--long_probes", default="rotation_psl_s0,rotation_e2e_s0",
                        help=f"runs also probed for {LONG_LINEAR_EPOCHS} epochs, to show the ranking has settled")
    parser.add_argument("--probes", default="knn,linear,linear_long",
                        help="evaluations to run: knn, linear, linear_long (the longer probes of --long_probes)")
    parser.add_argument("--tiny", action="store_true", help="smoke budget (CI): every run and step, minutes")
    parser.add_argument("--gpu_epochs", type=int, default=0,
                        help="the GPU budget's runs instead (Keras on JAX), E epochs per stage; the study's is 30")
    parser.add_argument("--dataset", default="cifar10",
                        help="the GPU runs' training data: arrays:FILE where TensorFlow is absent (psl_keras.data.arrays)")
    parser.add_argument("--print_commands", action="store_true",
                        help="print the train.py command of each run and the evaluate.py commands of the evaluations")
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    steps = [s for s in args.step.split(",") if s]
    if set(steps) - set(STEPS):
        parser.error(f"--step: choose from {', '.join(STEPS)}")
    if args.gpu_epochs < 0:
        parser.error("--gpu_epochs: a positive number of epochs per stage (0: the CPU study)")
    if args.dataset != "cifar10" and not args.gpu_epochs:
        parser.error("--dataset sets the GPU runs' training data; the CPU study trains on TFDS cifar10 "
                     "(--data_dir). Add --gpu_epochs E, or leave --dataset out")
    if args.gpu_epochs and "train" in steps:
        if steps != ["train"]:
            parser.error("--gpu_epochs: train the GPU runs in a call of their own (--step train, on the JAX "
                         "machine), then --step evaluate,report where TensorFlow is")
        os.environ["KERAS_BACKEND"] = "jax"  # read once, when Keras is first imported (below)
    seeds = (0, 1) if args.tiny else (0, 1, 2)
    specs = gpu_runs(args.gpu_epochs, seeds) if args.gpu_epochs else study_runs(seeds)
    wanted = set(args.only.split(",")) if args.only else set()
    if args.only:
        unknown = wanted - {s.name for s in specs} - {"random_init"}
        if unknown:
            parser.error(f"--only: unknown run(s) {', '.join(sorted(unknown))}; the study has "
                         f"{', '.join(s.name for s in specs)}")
        specs = [s for s in specs if s.name in wanted]
    args.long_probes = set(args.long_probes.split(",")) if args.long_probes else set()
    args.probes = set(args.probes.split(","))
    if args.probes - {"knn", "linear", "linear_long"}:
        parser.error("--probes: choose from knn, linear, linear_long")
    if args.print_commands:
        for spec in specs:
            print(command_line("train.py", train_settings(spec, args)))
        print("\n".join(eval_command_lines(args, specs)))
        return 0
    from psl_keras import rundir
    from psl_keras.errors import PSLError

    try:
        if "train" in steps:
            for spec in specs:
                train(spec, args)
        if "evaluate" in steps:
            from psl_keras.evaluation import protocols

            sources = protocols.load_sources(eval_settings(args))
            finished = [s for s in specs if rundir.read_summary(os.path.join(args.runs_dir, s.name)) is not None]
            for spec in finished:
                evaluate(spec.name, os.path.join(args.runs_dir, spec.name), args, sources)
            if not wanted or "random_init" in wanted:  # --only names the runs to evaluate; random_init is one
                evaluate("random_init", random_init_file(args), args, sources)
        if "report" in steps:
            print(f"\nTables: {report(args, specs)}")
    except PSLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the trainer saved the steps done; evaluations are cached per probe
        print("\nInterrupted. Run the same command again to continue where the study stopped.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
