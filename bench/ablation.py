"""The speed recipe with each of its techniques removed in turn (issue 18's ablation table).

    python bench/ablation.py --data_dir DATA --budget_minutes 5 --seeds 1 2 \\
        --out OUT [--variants full no_lookahead ...]

Every variant is ``main.py --mode train --recipe speed --budget_minutes B --train_all`` plus the
flags that take one technique away (the table below), then ``--mode test`` of its last
checkpoint (six-view TTA, the recipe's default, except for ``no_tta``). The same budget for all:
what a technique is worth is what it adds in the same minutes, its cost included. Runs go one
after another, each with one thread (``OMP_NUM_THREADS=1``), so several ablations may run side by
side on one machine, one per core (``taskset -c N``). Each variant's model folder is
``OUT/VARIANT-sSEED``; a finished one (its test report there) is not run again, so an ablation
cut short continues where it stopped. Prints one Markdown row per variant: the median test
accuracy over the seeds, each seed's, the difference from the full recipe, and the epochs each
seed's run fitted into the budget.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What removing each technique means, as flags over --recipe speed.
VARIANTS = {
    "full": [],
    "no_whiten": ["--no_whiten"],                        # the first layer learns from scratch
    "whiten_bias_all_run": ["--whiten_bias_share", "1"],  # not only the first 30% of steps
    "no_lookahead": ["--no_lookahead"],
    "no_muon": ["--muon_lr", "0"],                        # SGD for the filters too
    "random_flip": ["--flip", "random"],                 # instead of alternating
    "translate_4_zero_pad": ["--translate", "4", "--pad_mode", "constant"],  # the paper's crops
    "no_label_smoothing": ["--label_smoothing", "0"],
    "no_bias_lr_scale": ["--bias_lr_scale", "1"],
    "onecycle": ["--lr_schedule", "onecycle"],           # rise from 0, fall to 0
    "no_tta": [],                                        # the full run, tested with --tta off
}


def run(args) -> int:
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS",
                                                                              "1")))
    if done.returncode:
        sys.exit(f"main.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr}")
    return done.returncode


def trained_already(folder: str) -> bool:
    """Whether folder holds a finished run (a numbered checkpoint and no interrupted one)."""
    if not os.path.isdir(folder):
        return False
    names = os.listdir(folder)
    return "interrupted.ckpt" not in names and any(
        n.startswith("model-") and n[6:-5].isdigit() for n in names)


def tested_accuracy(folder: str, data_dir: str, tta: str) -> float:
    """The test accuracy of folder's newest checkpoint, from a --json report kept there."""
    report = os.path.join(folder, f"ablation_test_{tta}.json")
    if not os.path.exists(report):
        run(["--mode", "test", "--modeldir", folder, "--data_dir", data_dir, "--tta", tta,
             "--json", report])
    with open(report) as f:
        rows = json.load(f)["checkpoints"]
    return rows[-1]["accuracy"]


def epochs_trained(folder: str) -> float:
    """The epochs folder's run trained, from its config.json: the budget's plan, the last epoch
    a share of one."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)["config"]
    return config["max_epoch"] - 1 + config["final_epoch_share"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", required=True, help="folder for the variants' model folders")
    parser.add_argument("--budget_minutes", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("extra", nargs="*", help="more main.py flags for every run, after --")
    args = parser.parse_args(argv)
    results, epochs = {}, {}
    for name in args.variants:
        for seed in args.seeds:
            trained = "full" if name == "no_tta" else name
            folder = os.path.join(args.out, f"{trained}-s{seed}")
            if not trained_already(folder):
                run(["--mode", "train", "--recipe", "speed", "--budget_minutes",
                     str(args.budget_minutes), "--train_all", "--data_dir", args.data_dir,
                     "--modeldir", folder, "--seed", str(seed), "--quiet", "--overwrite",
                     *VARIANTS[trained], *args.extra])
            tta = "off" if name == "no_tta" else "six"
            results.setdefault(name, []).append(tested_accuracy(folder, args.data_dir, tta))
            epochs.setdefault(name, []).append(epochs_trained(folder))
    full = statistics.median(results["full"]) if "full" in results else None
    print(f"| variant | test accuracy, median of {len(args.seeds)} seeds | per seed | "
          f"against full | epochs trained, per seed |")
    print("|---|---|---|---|---|")
    for name, accs in results.items():
        median = statistics.median(accs)
        delta = "" if full is None or name == "full" else f"{100 * (median - full):+.2f}"
        print(f"| {name} | {100 * median:.2f}% | "
              + ", ".join(f"{100 * a:.2f}" for a in accs) + f" | {delta} | "
              + ", ".join(f"{e:.2f}" for e in epochs[name]) + " |")


if __name__ == "__main__":
    main()
