"""The speed techniques and the budget under torchrun: two gloo processes on CPU train airbench
with its whitened first layer and lookahead as one process does, and a --budget_minutes run with
synchronized batch norm times its steps in step on both ranks and plans once for both."""
import json
import os

from cli_tools import TINY, load, run_main
from test_distributed import cifar, torchrun  # noqa: F401 (cifar is a fixture)

# airbench at a sixteenth of its width on 16 training images: two global batches of 8
AIRBENCH = ["--network", "airbench", "--width_scale", "0.125", "--batch_size", "8",
            "--device", "cpu", "--no_download", "--eval_batch_size", "64", "--amp", "off",
            "--quiet", "--split_index", "16", "--lr_decay_epochs", "--learning_rate", "0.05",
            "--save_interval", "1"]


def _largest_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a
               if a[k].is_floating_point())


def test_whitening_and_lookahead_train_on_two_processes_as_on_one(cifar, tmp_path):  # noqa: F811
    """With --sync_bn two ranks of 4 images step as one process of 8: the same whitened first
    layer (each rank computes it from the same images), the bias stopping at the same step,
    lookahead's folds and its final hand-over alike."""
    extra = ["--whiten", "--whiten_bias_share", "0.5", "--lookahead", "--lookahead_every", "3",
             "--max_epoch", "2"]
    runs = {}
    for nproc in (1, 2):
        modeldir = str(tmp_path / f"p{nproc}")
        args = ["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, *AIRBENCH,
                *extra] + (["--sync_bn"] if nproc > 1 else [])
        r = torchrun(args, nproc) if nproc > 1 else run_main(args)
        assert r.returncode == 0, r.stdout + r.stderr
        runs[nproc] = load(os.path.join(modeldir, "model-2.ckpt"))
    one, two = runs[1], runs[2]
    assert one["model"].keys() == two["model"].keys()
    assert _largest_difference(one["model"], two["model"]) < 1e-4
    assert _largest_difference(one["lookahead"], two["lookahead"]) < 1e-4
    for ckpt in (one, two):  # the run ended by taking the slow weights
        assert _largest_difference(ckpt["model"], ckpt["lookahead"]) == 0
    # the whitened first layer (fixed) is the same on both
    weight = next(k for k in two["model"] if k.startswith("whiten") and k.endswith("weight"))
    assert _largest_difference({weight: one["model"][weight]}, {weight: two["model"][weight]}) \
        < 1e-6


def test_a_budget_run_on_two_processes_times_in_step_and_plans_once(cifar, tmp_path):  # noqa: F811
    """Synchronized batch norm puts a collective in every forward pass: both ranks must time the
    same number of steps (each time the slower rank's), or one waits in a collective the other
    never enters. One plan, said once, held by config.json and the last checkpoint."""
    modeldir = str(tmp_path / "budget")
    args = ["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, *TINY, "--quiet",
            "--split_index", "32", "--lr_decay_epochs", "--sync_bn", "--lookahead",
            "--budget_minutes", "0.4", "--save_interval", "1", "--dist_timeout", "60"]
    r = torchrun(args, 2)
    assert r.returncode == 0, r.stdout + r.stderr
    plans = [line for line in r.stdout.splitlines() if line.startswith("budget 0.4 min:")]
    assert len(plans) >= 1 and "ms per step" in plans[0], r.stdout
    assert r.stdout.count("ms per step") == 1  # rank 0 alone says it
    with open(os.path.join(modeldir, "config.json")) as f:
        recorded = json.load(f)["config"]
    names = sorted(int(n[6:-5]) for n in os.listdir(modeldir)
                   if n.startswith("model-") and n[6:-5].isdigit())
    assert names and names[-1] == recorded["max_epoch"]
    last = load(os.path.join(modeldir, f"model-{names[-1]}.ckpt"))
    assert last["config"]["max_epoch"] == recorded["max_epoch"]
    assert _largest_difference(last["model"], last["lookahead"]) == 0
