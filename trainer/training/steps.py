"""One training step, as the training loop takes it and as the budget, the width chooser and
--amp auto time it (trainer.training.step_timing): the rates of the step, the forward pass and
its loss, the backward pass through the loss scaler, the optimizer's step, and the weight
averages after it. Keeping the step in one place is what lets the timings be of the run's own
step, whatever it holds (DistributedDataParallel, a compiled network, fp16's loss scaler, label
smoothing, L1, lookahead, EMA).

The functions take a ``model``: anything with the ``config``, ``dist``, ``runtime``, ``network``,
``optimizer``, ``scaler``, ``ema``, ``lookahead`` and ``train_net`` of Model.MyModel.
"""
import torch.nn.functional as F

from configure import applies
from trainer.parallel import distributed
from trainer.training import pretrained, runtime, schedules


def begin_epoch(model, epoch: int) -> None:
    """Put the network in the state (1-based) ``epoch`` trains in: training mode, and for
    --freeze_epochs the backbone frozen or free. A pure function of the epoch, so a resumed run
    sets the same state; the training network (DDP's wrapper under torchrun) is built for it."""
    model.network.train()
    if applies("freeze_epochs", model.config.network):  # resnet50: the backbone fixed at first
        if pretrained.set_frozen(model.network, epoch <= model.config.freeze_epochs):
            # DDP registers the parameters that take a gradient when it wraps: wrap anew
            model.train_net = None
    if model.train_net is None:
        model.train_net = runtime.training_network(model.network, model.forward_net,
                                                   model.runtime, model.config)


def set_rates(model, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Set each parameter group's rate for step ``step`` (0-based) of (1-based) ``epoch``: the
    schedule's (SGD's own under --decoupled) times the group's ``lr_scale``, or 0 for a group
    past its ``until`` share of the run's progress (--whiten_bias_share). Return the
    schedule's rate."""
    cfg = model.config
    lr = schedules.lr_at_step(cfg, epoch, step, steps_per_epoch)
    rate = lr * runtime.rate_scale(cfg)
    progress = schedules.progress(cfg, epoch, step, steps_per_epoch)
    for group in model.optimizer.param_groups:
        learning = progress < group.get("until", 1.0)
        group["lr"] = rate * group.get("lr_scale", 1.0) if learning else 0.0
    return lr


def train_step(model, x, y, global_batch: int = None):
    """Forward, backward and the optimizer's step on the batch (x, y): the network's float input
    and its labels, this rank's part of a step of ``global_batch`` images over all ranks (under
    torchrun the loss is weighed by this rank's share, so that DDP's average over the ranks is
    the mean over the global batch; alone, the batch is the global one). Return (logits, the
    cross-entropy the epoch reports)."""
    cfg, world = model.config, model.dist.world_size
    try:
        with model.runtime.autocast():
            logits = model.train_net(x)
            loss, reported = objective(cfg, model.network, logits, y)
        if world > 1:
            loss = loss * (len(y) * world / global_batch)
        model.optimizer.zero_grad(set_to_none=True)
        model.scaler.scale(loss).backward()  # DDP sums the gradients over the ranks
    except RuntimeError as e:
        if world > 1 and distributed.is_lost_contact(e):
            raise distributed.lost_contact(e) from None
        raise
    model.scaler.step(model.optimizer)
    model.scaler.update()
    return logits, reported


def after_step(model, epoch: int, step: int, steps_per_epoch: int) -> None:
    """The weight averages after step ``step`` (0-based) of ``epoch``: lookahead's fold every
    --lookahead_every steps (at the run's progress after the step) and the EMA's update."""
    if model.lookahead is not None:
        done = (epoch - 1) * steps_per_epoch + step + 1
        model.lookahead.after_step(model.network, done,
                                   schedules.progress(model.config, epoch, step + 1,
                                                      steps_per_epoch))
    if model.ema is not None:
        model.ema.update(model.network)


def objective(cfg, network, logits, y):
    """(what training minimizes, the cross-entropy it reports): the cross-entropy, against
    smoothed targets with --label_smoothing, plus, with --l1, l1 times the sum of |w| over all
    parameters (weight decay is the optimizer's). The reported loss is the plain cross-entropy,
    comparable with the validation loss."""
    smoothing = cfg.label_smoothing
    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    reported = loss if not smoothing else F.cross_entropy(logits.detach(), y)
    if not cfg.l1:
        return loss, reported
    penalty = sum(p.abs().sum() for p in network.parameters())
    return loss + cfg.l1 * penalty, reported
