"""Training speed of each network at each precision on this machine: a script that prints figures.

    python bench/networks.py [--threads 1] [--batch_size 128] [--steps 10] [--repeats 3]
                             [--nets resnet20 resnet9 airbench airbench@0.5] [--amp off bf16]

For every network and precision it times the bare training step (forward, loss, backward, SGD
step, in the memory format the trainer uses) on random batches prepared beforehand, and prints
images per second: the median and the spread over --repeats, after one warm-up repeat. Which
precision is faster depends on the CPU (measured, BENCHMARKS.md: bf16 3.3 to 4.5 times slower than
fp32 on an Intel Xeon without AMX or AVX-512 BF16, 1.7 to 1.8 times faster on an AMD EPYC with
AVX-512 BF16), so the CPU's name and its bf16 features are printed.
A network is named as NAME or NAME@WIDTH_SCALE; resnet20, resnet56, ... are ResNet v1 of that depth,
and resnet50 is --network resnet50 (torchvision's, at 224 pixels; needs torchvision).
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
from Model import MyModel  # noqa: E402
from configure import Config  # noqa: E402
from throughput import cpu_name  # noqa: E402


def config_of(name: str, amp: str, batch_size: int) -> Config:
    network, _, width = name.partition("@")
    values = dict(amp=amp, batch_size=batch_size, device="cpu", lr_decay_epochs=())
    if network.startswith("resnet") and network[6:].isdigit() and \
            network not in ("resnet9", "resnet18", "resnet50"):  # those are --network choices
        depth = int(network[6:])
        if (depth - 2) % 6:
            sys.exit(f"{network}: a ResNet v1 has depth 6n+2 (20, 32, 44, 56, 110)")
        values.update(network="resnet", resnet_size=(depth - 2) // 6)
    else:
        values["network"] = network
    if width:
        values["width_scale"] = float(width)
    return Config(**values).validate()


def step_rates(cfg: Config, steps: int, repeats: int) -> list:
    """Images per second of ``steps`` training steps, once per repeat (after one warm-up)."""
    model = MyModel(cfg, log=lambda *a: None)
    pool = [(model.runtime.prepare_images(torch.randint(0, 256, (cfg.batch_size, 3, 32, 32),
                                                        dtype=torch.uint8), training=False),
             torch.randint(0, cfg.num_classes, (cfg.batch_size,)))
            for _ in range(8)]  # a pool, not one batch: an over-fitted batch slows a CPU down
    model.network.train()
    rates = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        for i in range(steps):
            x, y = pool[i % len(pool)]
            with model.runtime.autocast():
                loss = F.cross_entropy(model.forward_net(x), y)
            model.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            model.optimizer.step()
        if repeat:  # the first is the warm-up
            rates.append(steps * cfg.batch_size / (time.perf_counter() - start))
    return rates


def bf16_features() -> str:
    if not os.path.exists("/proc/cpuinfo"):
        return "unknown"
    with open("/proc/cpuinfo") as f:
        flags = set(next((line for line in f if line.startswith("flags")), "").split())
    found = [name for name in ("amx_bf16", "amx_tile", "avx512_bf16") if name in flags]
    return ", ".join(found) if found else "no AMX, no AVX-512 BF16"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nets", nargs="+", default=["resnet20", "resnet9", "airbench", "airbench@0.5"])
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=("off", "bf16"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()} ({bf16_features()}), torch {torch.__version__}, {args.threads} "
          f"thread(s), batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats")
    print(f"{'network':<16} {'params':>10}  " + "  ".join(f"{a:>26}" for a in args.amp))
    for name in args.nets:
        cells, params = [], None
        for amp in args.amp:
            cfg = config_of(name, amp, args.batch_size)
            rates = step_rates(cfg, args.steps, args.repeats)
            params = sum(p.numel() for p in MyModel(cfg, log=lambda *a: None).network.parameters())
            cells.append(f"{statistics.median(rates):7.0f} img/s ({min(rates):.0f}-{max(rates):.0f})")
        print(f"{name:<16} {params:>10,}  " + "  ".join(f"{c:>26}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
