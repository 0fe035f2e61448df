"""Evaluation: the network's logits in large batches (with --tta flip, of each image and its
mirror image; with --tta six, of six views), per-image scores, validation accuracy and loss,
and the scoring of saved checkpoints.

The functions take a ``model``: anything with the ``config``, ``dist`` (distributed context),
``runtime`` (trainer.training.runtime.Runtime), ``network``, ``forward_net`` and ``ema`` of
Model.MyModel. Under torchrun each rank scores its own share of the images (``_share_and_score``).
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import ImageUtils
from trainer.parallel import distributed


def to_image_tensor(x: np.ndarray) -> torch.Tensor:
    """(N, 3072) rows -> (N, 3, 32, 32) tensor of the same dtype, no copy."""
    return torch.from_numpy(np.ascontiguousarray(x)).view(-1, 3, ImageUtils.SIZE, ImageUtils.SIZE)


def bars_off(config, context):
    """tqdm's ``disable``: off with --quiet and on ranks other than 0; None lets tqdm decide (bars
    only when output goes to a terminal)."""
    return True if getattr(config, "quiet", False) or not context.is_main else None


@torch.inference_mode()
def logits(model, x: np.ndarray, desc: str = "evaluating", y: np.ndarray = None,
           tta: str = None) -> torch.Tensor:
    """(N, 3072) rows, uint8 or float in [0, 255] -> (N, num_classes) float32 logits on device.

    The weight average is evaluated when there is one (--ema). With labels y, the progress bar
    shows the running loss and accuracy. ``tta``: the test-time augmentation (default
    config.tta; validation during training passes "off").
    """
    rt, config = model.runtime, model.config
    network = model.ema.network if model.ema is not None else model.forward_net
    network.eval()
    images = to_image_tensor(x)
    if rt.device.type == "cuda":
        images = images.pin_memory()
    labels = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.int64))
    outputs = []
    bs = config.eval_batch_size
    correct, loss_sum, start = 0, 0.0, time.perf_counter()
    bar = tqdm(range(0, len(images), bs), desc=desc, leave=False,
               disable=bars_off(config, model.dist), unit="batch")
    for i in bar:
        batch = images[i:i + bs].to(rt.device, non_blocking=True)
        outputs.append(evaluate_batch(network, rt.prepare_images(batch, False), rt,
                                      config.tta if tta is None else tta))
        if labels is not None and not bar.disable:
            target = labels[i:i + bs].to(rt.device)
            correct += int((outputs[-1].argmax(1) == target).sum())
            loss_sum += float(F.cross_entropy(outputs[-1], target, reduction="sum"))
            done = min(i + bs, len(images))
            bar.set_postfix(loss=f"{loss_sum / done:.3f}", acc=f"{100 * correct / done:.1f}%",
                            img_s=f"{done / max(time.perf_counter() - start, 1e-9):.0f}")
    return torch.cat(outputs) if outputs else torch.empty(0, config.num_classes, device=rt.device)


# --tta six: (shift down, shift right, weight) of each unmirrored view; each view's mirror image
# has the same weight. airbench94's tta_level 2: the image and its mirror 1/2, the two one-pixel
# shifts (reflect-padded) with their mirrors the other 1/2.
SIX_VIEWS = ((0, 0, 0.25), (-1, -1, 0.125), (1, 1, 0.125))


def views(tta: str) -> int:
    """Network passes per image of test-time augmentation ``tta``."""
    return {"six": 2 * len(SIX_VIEWS), "flip": 2}.get(tta, 1)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) -> the same, content moved dy pixels down and dx right, edges reflected."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[2], x.shape[3]
    return padded[:, :, pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def evaluate_batch(network, x: torch.Tensor, rt, tta: str) -> torch.Tensor:
    """Logits (B, classes) of one preprocessed batch (B, 3, 32, 32). --tta flip: the log of the
    mean of the class probabilities of the images and of their mirror images; --tta six: the
    weighted mean of the logits of the six views of SIX_VIEWS."""
    with rt.autocast():
        if tta == "six":
            out = 0
            for dy, dx, weight in SIX_VIEWS:
                view = shifted(x, dy, dx)
                out = out + weight * (network(view).float() + network(view.flip(3)).float())
            return out
        out = network(x).float()
        if tta != "flip":
            return out
        mirrored = network(x.flip(3)).float()
    both = torch.stack([out.log_softmax(1), mirrored.log_softmax(1)])
    return torch.logsumexp(both, 0) - math.log(2)


def local_scores(model, x: np.ndarray, y: np.ndarray, desc: str, tta: str = None) -> dict:
    """``scores`` of this process's images alone."""
    out = logits(model, x, desc, y, tta)
    target = torch.as_tensor(np.asarray(y, dtype=np.int64), device=out.device)
    losses = F.cross_entropy(out, target, reduction="none").double()
    return {"predictions": out.argmax(1).cpu().numpy(), "losses": losses.cpu().numpy()}


def _share_and_score(model, x: np.ndarray, y: np.ndarray, desc: str, tta: str = None):
    """Under torchrun: (this rank's labels, the scores of this rank's share of (x, y))."""
    part = distributed.share(len(x), model.dist.rank, model.dist.world_size)
    labels = np.asarray(y)[part]
    return labels, local_scores(model, x[part], labels, desc, tta)


def scores(model, x: np.ndarray, y: np.ndarray, desc: str = "evaluating",
           tta: str = None) -> dict:
    """Predictions and losses of the network as it is on (x, y): {"predictions" (N,) int64,
    "losses" (N,) float64 cross-entropy per image}, as numpy arrays. Under torchrun each rank
    scores its own part (distributed.share) and every rank gets all N, in order."""
    if model.dist.distributed:
        _, mine = _share_and_score(model, x, y, desc, tta)
        return {k: distributed.gather_arrays(v) for k, v in mine.items()}
    return local_scores(model, x, y, desc, tta)


def validate(model, x: np.ndarray, y: np.ndarray):
    """(accuracy in [0, 1], mean cross-entropy) of the network as it is on (x, y), without
    test-time augmentation (a recipe's --tta is for --mode test and predict). Under torchrun each rank scores its own part and the counts and loss sums are added up."""
    if model.dist.distributed:
        labels, s = _share_and_score(model, x, y, "validating", "off")
        correct, loss_sum, count = distributed.sum_over_ranks(
            [float((s["predictions"] == labels).sum()), float(s["losses"].sum()),
             float(len(s["losses"]))], model.runtime.collective_device())
        return correct / count, loss_sum / count
    s = scores(model, x, y, "validating", "off")
    return float((s["predictions"] == np.asarray(y)).mean()), float(s["losses"].mean())


def evaluate_checkpoints(model, x: np.ndarray, y: np.ndarray, checkpoint_list,
                         describe_weights) -> list:
    """Score each listed checkpoint (epoch numbers or "best") on (x, y), loading each with
    ``model.load``: a list of dicts with "checkpoint" (file name), "epoch", "weights" (what
    ``describe_weights`` makes of the loaded state dict), "accuracy", "loss", "images" and
    "predictions"."""
    for num in checkpoint_list:  # check every one before spending time on any
        model.checkpoint_file(num)
    results = []
    for num in checkpoint_list:
        ckpt = model.load(num)
        s = scores(model, x, y)
        results.append({"checkpoint": os.path.basename(model.checkpoint_file(num)),
                        "epoch": ckpt["epoch"],
                        "weights": describe_weights(model.network.state_dict()),
                        "accuracy": float((s["predictions"] == np.asarray(y)).mean()),
                        "loss": float(s["losses"].mean()), "images": len(y),
                        "predictions": s["predictions"]})
    return results
