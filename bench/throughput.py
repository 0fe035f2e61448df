"""Throughput benchmark: this project's training loop against the network's ceiling and against the
usual per-image DataLoader pipeline. A script that prints figures, not a test.

    python bench/throughput.py [--resnet_size 3] [--batch_size 128] [--steps 20] [--repeats 3]
                               [--data_dir D] [--device auto] [--full_epoch]

In one run it measures, in images per second (median and spread over --repeats):
  (a) the bare training step on random tensors already on the device (the ceiling);
  (b) this project's full training loop (Model.MyModel.train: data on the device, batched
      crop/flip/standardize, the same fast paths as (a));
  (c) the usual pipeline: a DataLoader over a Dataset that preprocesses one image at a time with
      ImageUtils, network in its default format and precision;
  (d) evaluation: MyModel.accuracy in large batches, and the course's one-image-at-a-time loop.
--full_epoch (needs --data_dir) also times one whole epoch, train plus validation with process start,
as two fresh processes: ``main.py --mode train --max_epoch 1`` and ``bench/usual_pipeline.py``,
and reports each one's peak resident memory.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]
import DataReader  # noqa: E402
from Model import MyModel  # noqa: E402
from NetWork import ResNet, depth_of  # noqa: E402
from configure import Config  # noqa: E402
from trainer.training.runtime import select_device  # noqa: E402
from usual_pipeline import PerImageDataset, train_steps, validate_per_image  # noqa: E402


def cpu_name():
    if os.path.exists("/proc/cpuinfo"):  # Linux names the model there; platform does not
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rates_of(run, repeats, device):
    """Images per second of run() (which returns how many images it handled), once per repeat."""
    rates = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        images = run()
        sync(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def summary(rates):
    med = statistics.median(rates)
    return med, f"{med:9.0f} img/s  (min {min(rates):.0f}, max {max(rates):.0f}, n={len(rates)})"


def bare_step(cfg, steps, repeats):
    """(a) forward, loss, backward, step on random batches prepared on the device beforehand.

    The batches cycle through a pool: training on one fixed batch over-fits it within a few steps,
    and the tiny (denormal) values that follow slow a CPU down, which would understate the ceiling.
    """
    model = MyModel(cfg, log=lambda *a: None)
    # Random images through the same preprocessing as (b), done before the clock starts.
    pool = [(model.runtime.prepare_images(torch.randint(0, 256, (cfg.batch_size, 3, 32, 32),
                                                        dtype=torch.uint8, device=model.device),
                                          training=False),
             torch.randint(0, cfg.num_classes, (cfg.batch_size,), device=model.device))
            for _ in range(16)]
    model.network.train()
    count = [0]

    def step():
        x, y = pool[count[0] % len(pool)]
        count[0] += 1
        with model.runtime.autocast():
            loss = F.cross_entropy(model.forward_net(x), y)
        model.optimizer.zero_grad(set_to_none=True)
        model.scaler.scale(loss).backward()
        model.scaler.step(model.optimizer)
        model.scaler.update()

    def steps_of_training():
        for _ in range(steps):
            step()
        return steps * cfg.batch_size

    steps_of_training()  # warm-up as long as (b)'s first epoch
    return rates_of(steps_of_training, repeats, model.device)


def full_loop(cfg, x, y, steps, repeats):
    """(b) MyModel.train over steps*batch_size images; one epoch of warm-up, then one per repeat."""
    n = min(len(x), steps * cfg.batch_size)
    with tempfile.TemporaryDirectory() as modeldir:
        run = Config(**dict(cfg.to_dict(), max_epoch=repeats + 1, save_interval=10 ** 6,
                            modeldir=modeldir, lr_decay_epochs=()))
        history = MyModel(run, log=lambda *a: None).train(x[:n], y[:n])
    return [m["images_per_second"] for m in history[1:]]


def usual_pipeline(cfg, x, y, steps, repeats, num_workers):
    """(c) DataLoader over per-image preprocessing; the network in default format, fp32."""
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    net = ResNet(cfg.resnet_version, cfg.resnet_size, cfg.num_classes).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    n = min(len(x), (steps + 2) * cfg.batch_size)
    loader = DataLoader(PerImageDataset(x[:n], y[:n], True), batch_size=cfg.batch_size,
                        shuffle=True, num_workers=num_workers, pin_memory=device.type == "cuda")

    def on_device(batches):
        for xb, yb in batches:
            yield xb.to(device), yb.to(device)

    train_steps(net, on_device(loader), optimizer, max_steps=2)  # warm-up
    rates = rates_of(lambda: train_steps(net, on_device(loader), optimizer, max_steps=steps),
                     repeats, device)
    return rates, net


def evaluation(cfg, x, y, repeats):
    """(d) batched evaluation of len(x) images, the way test and predict run."""
    model = MyModel(cfg, log=lambda *a: None)
    model.accuracy(x[:cfg.eval_batch_size], y[:cfg.eval_batch_size])  # warm-up

    def evaluate_all():
        model.accuracy(x, y)
        return len(x)

    return rates_of(evaluate_all, repeats, model.device)


def per_image_evaluation(net, x, y):
    """The course's loop, one image at a time, once."""
    def evaluate_all():
        validate_per_image(net, x, y)
        return len(x)

    return rates_of(evaluate_all, 1, next(net.parameters()).device)


def _peak_rss_mib(pid):
    """The process's peak resident memory so far (VmHWM), or None where /proc has no such line."""
    path = f"/proc/{pid}/status"
    if not os.path.exists(path):
        return None
    with open(path) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return None


def timed_process(cmd):
    """Run cmd; return (wall seconds, peak RSS in MiB or None, output).

    The peak is read from /proc while the process runs: the rusage of a child started from this
    (large) process counts this process's own memory, which the child never uses after exec.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = None
        while proc.poll() is None:
            try:
                now = _peak_rss_mib(proc.pid)
            except OSError:  # the process ended between poll() and the read
                now = None
            if now:
                peak = max(peak or 0, now)
            time.sleep(0.2)
        wall = time.perf_counter() - start
        log.seek(0)
        out = log.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{out}")
    return wall, peak, out


def full_epoch(args, cfg):
    with tempfile.TemporaryDirectory() as modeldir:
        ours = [sys.executable, "main.py", "--mode", "train", "--max_epoch", "1", "--data_dir",
                args.data_dir, "--modeldir", modeldir, "--resnet_size", str(cfg.resnet_size),
                "--batch_size", str(cfg.batch_size), "--device", cfg.device, "--no_download"]
        usual = [sys.executable, os.path.join("bench", "usual_pipeline.py"), "--data_dir",
                 args.data_dir, "--resnet_size", str(cfg.resnet_size), "--batch_size",
                 str(cfg.batch_size), "--eval", args.usual_eval]
        results = {"ours": [], "usual": []}
        for _ in range(args.epoch_repeats):
            for name, cmd in (("ours", ours), ("usual", usual)):
                wall, rss, out = timed_process(cmd)
                results[name].append((wall, rss))
                last = [line for line in out.splitlines() if line.startswith(("epoch", "usual"))]
                shown = f"{rss:6.0f} MiB" if rss else "   n/a"
                print(f"  {name:5s} {wall:7.1f} s  peak RSS {shown}  | {last[-1] if last else ''}",
                      flush=True)
    ours_s = statistics.median(w for w, _ in results["ours"])
    usual_s = statistics.median(w for w, _ in results["usual"])
    print(f"whole epoch, train + validation, process start included (median of "
          f"{args.epoch_repeats}): ours {ours_s:.1f} s, usual ({args.usual_eval} validation) "
          f"{usual_s:.1f} s, ratio {ours_s / usual_s:.3f}")
    peaks = [r for _, r in results["ours"] if r]
    if peaks:
        print(f"peak resident memory of training (ours): {max(peaks):.0f} MiB")


def main():
    p = argparse.ArgumentParser(description="Training and evaluation throughput.")
    p.add_argument("--resnet_version", type=int, default=1)
    p.add_argument("--resnet_size", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--eval_images", type=int, default=10000)
    p.add_argument("--per_image_eval_images", type=int, default=500,
                   help="images for the one-at-a-time evaluation (slow)")
    p.add_argument("--data_dir", help="a CIFAR-10 folder; random images otherwise")
    p.add_argument("--device", default="auto")
    p.add_argument("--channels_last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers for (c)")
    p.add_argument("--full_epoch", action="store_true", help="also time whole-epoch processes")
    p.add_argument("--skip_steps", action="store_true", help="skip (a)-(d); with --full_epoch")
    p.add_argument("--epoch_repeats", type=int, default=1)
    p.add_argument("--usual_eval", choices=("per_image", "batched"), default="per_image")
    args = p.parse_args()

    cfg = Config(resnet_version=args.resnet_version, resnet_size=args.resnet_size,
                 batch_size=args.batch_size, device=args.device, channels_last=args.channels_last,
                 amp=args.amp, compile=args.compile)
    device = select_device(cfg.device)
    if args.data_dir:
        x, y, x_test, y_test = DataReader.load_data(args.data_dir)
        source = f"CIFAR-10 from {args.data_dir}"
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (50000, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 50000)
        x_test, y_test = x[:10000], y[:10000]
        source = "random images"
    x_eval, y_eval = x_test[:args.eval_images], y_test[:args.eval_images]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"python {platform.python_version()}")
    print(f"ResNet-{depth_of(cfg.resnet_version, cfg.resnet_size)} v{cfg.resnet_version}, batch "
          f"{cfg.batch_size}, {args.steps} steps x {args.repeats} repeats, {source}; channels_last "
          f"{cfg.channels_last}, amp {cfg.amp}, compile {cfg.compile}", flush=True)

    if not args.skip_steps:
        step_figures(args, cfg, x, y, x_eval, y_eval)
    if args.full_epoch:
        if not args.data_dir:
            sys.exit("--full_epoch needs --data_dir with CIFAR-10 in it.")
        full_epoch(args, cfg)


def step_figures(args, cfg, x, y, x_eval, y_eval):
    a_med, a = summary(bare_step(cfg, args.steps, args.repeats))
    print(f"(a) bare training step     {a}", flush=True)
    b_med, b = summary(full_loop(cfg, x, y, args.steps, args.repeats))
    print(f"(b) full training loop     {b}", flush=True)
    c_rates, usual_net = usual_pipeline(cfg, x, y, args.steps, args.repeats, args.num_workers)
    c_med, c = summary(c_rates)
    print(f"(c) usual DataLoader loop  {c}", flush=True)
    d_med, d = summary(evaluation(cfg, x_eval, y_eval, args.repeats))
    print(f"(d) evaluation, batched    {d}   ({len(x_eval)} images: "
          f"{len(x_eval) / d_med:.2f} s)", flush=True)
    n_slow = min(args.per_image_eval_images, len(x_eval))
    _, e = summary(per_image_evaluation(usual_net, x_eval[:n_slow], y_eval[:n_slow]))
    print(f"    evaluation, per image  {e}", flush=True)
    print(f"ratios: (b)/(a) {b_med / a_med:.3f}   (b)/(c) {b_med / c_med:.2f}   "
          f"45,000-image epoch at (b): {45000 / b_med:.1f} s", flush=True)


if __name__ == "__main__":
    main()
