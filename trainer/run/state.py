"""A run's checkpoint state: the snapshot a checkpoint holds, and what decides whether a checkpoint
may be loaded into this network (``check_fit``) or resumed by this run (``check_same_run``).

The functions that look at a run take a ``model``: anything with the ``config``, ``dist``, ``log``,
``runtime``, ``network``, ``optimizer``, ``scaler``, ``ema``, ``lookahead``, ``epoch`` and
``history`` of Model.MyModel. Nothing here changes the configuration: ``check_same_run`` returns
the values a resumed run adopts (a --budget_minutes run's plan), and its caller applies them.
"""
import copy
import os

from NetWork import depth_of
from configure import ARCHITECTURE_KEYS, RECIPES, RUN_DEFINING_KEYS, applies, flag
from trainer.run import checkpoints, contents
from trainer.run.checkpoints import CheckpointError, checkpoint_path, read_checkpoint


def describe(config_dict: dict) -> str:
    """The network a configuration builds, in words: "ResNet-20 v1 (resnet_size 3)"."""
    network = config_dict.get("network", "resnet")
    if network in ("resnet9", "airbench"):
        scale = config_dict.get("width_scale", 1.0)
        return {"resnet9": "ResNet-9 (DAWNBench)", "airbench": "airbench94's convnet"}[network] + \
            (f" at width x{scale:g}" if scale != 1 else "") + \
            (" with a whitened first layer" if network == "airbench" and config_dict.get("whiten")
             else "")
    if network == "resnet50":
        return "ResNet-50 (torchvision" + \
            (", ImageNet weights)" if config_dict.get("pretrained") == "imagenet" else ")")
    if network != "resnet":
        return {"resnet18": "ResNet-18 (for 32x32 images)"}.get(network, str(network)) + \
            (" with batch norm" if config_dict.get("batch_norm") and network != "resnet18" else "")
    v, n = config_dict.get("resnet_version"), config_dict.get("resnet_size")
    try:
        return f"ResNet-{depth_of(v, n)} v{v} (resnet_size {n})"
    except TypeError:
        return f"resnet_version {v}, resnet_size {n}"


def config_differences(saved: dict, current: dict, keys) -> list:
    """[(key, saved value, current value)] of the keys that differ; a key that does not shape the
    network both name (downsample of simple_nn, say) is not compared."""
    network = saved.get("network")
    same_network = network == current.get("network")
    return [(k, saved.get(k), current.get(k)) for k in keys
            if saved.get(k) != current.get(k) and not (same_network and not applies(k, network))]


# --------------------------------------------------------------------------------------------
# The snapshot

def snapshot(model, step: int = 0, partial: dict = None, data_digest: str = "") -> dict:
    """What a checkpoint holds (its keys are checkpoints.py's table, in that order)."""
    mean_std = model.runtime.mean_std
    return {
        "format": checkpoints.CHECKPOINT_FORMAT,
        "epoch": model.epoch,
        "step": step,
        "model": model.network.state_dict(),
        "optimizer": model.optimizer.state_dict(),
        "scaler": model.scaler.state_dict(),
        "config": model.config.to_dict(),
        "data": data_digest,
        "rng": contents.capture_rng_states(),
        "metrics": list(model.history),
        "partial": dict(partial or {}),
        "normalization": None if mean_std is None else
        {"mean": mean_std[0].cpu(), "std": mean_std[1].cpu()},
        "ema": None if model.ema is None else model.ema.state_dict(),
        "lookahead": None if model.lookahead is None else model.lookahead.state_dict(),
    }


def save(model, path: str, step: int = 0, partial: dict = None, data_digest: str = "") -> None:
    """Write ``snapshot`` to path; under torchrun the ranks hold the same weights, so rank 0
    alone writes."""
    if model.dist.is_main:
        checkpoints.save(snapshot(model, step, partial, data_digest), path)


# --------------------------------------------------------------------------------------------
# May this checkpoint be loaded, or resumed?

def check_fit(ckpt: dict, path: str, config, network) -> None:
    """Refuse a checkpoint of another network, or one whose tensors do not fit this one."""
    saved_config, current = ckpt["config"], config.to_dict()
    diffs = config_differences(saved_config, current, ARCHITECTURE_KEYS)
    if diffs:
        saved = ", ".join(f"{k} {a}" for k, a, _ in diffs)
        now = ", ".join(f"{k} {b}" for k, _, b in diffs)
        raise CheckpointError(f"{path} holds a {describe(saved_config)} with {saved}, but this "
                              f"run builds a {describe(current)} with {now}; pass "
                              f"{flags_for(saved_config, diffs, config)} to use it.")
    problem = contents.state_dict_problem(ckpt["model"], network.state_dict())
    if problem is None and ckpt.get("ema") is not None:
        problem = contents.state_dict_problem(ckpt["ema"], network.state_dict())
        problem = problem and f"its weight average: {problem}"
    if problem is None and ckpt.get("lookahead") is not None:
        problem = contents.state_dict_problem(ckpt["lookahead"], network.state_dict())
        problem = problem and f"its lookahead weights: {problem}"
    if problem:
        raise CheckpointError(f"{path} does not fit this network: {problem}.")


def flags_for(saved_config: dict, diffs, config) -> str:
    """The flags that give back a checkpoint's values of the differing keys: its --recipe where
    the recipe explains them (one set here, or set by the recipe it was trained with), and the
    others one by one."""
    recipe = saved_config.get("recipe", "course")
    if recipe == config.recipe:
        return " ".join(flag(k, a) for k, a, _ in diffs)
    own = RECIPES.get(recipe, {})
    rest = [flag(k, a) for k, a, _ in diffs
            if not (config.from_recipe(k) or (k in own and own[k] == a))]
    return " ".join([f"--recipe {recipe}"] + rest)


def check_same_run(ckpt: dict, path: str, config, network, parameters,
                   data_digest: str = None) -> dict:
    """Refuse to resume a run defined otherwise (data_digest None: the data is not known yet).
    Return the configuration values the resumed run adopts from the checkpoint: a
    --budget_minutes run keeps the plan made when it began, or last made (max_epoch,
    final_epoch_share, lr_decay_epochs, warmup_epochs, plan_anchor); {} otherwise. ``parameters``: the optimizer's, in its groups' order."""
    check_fit(ckpt, path, config, network)
    saved_config = ckpt["config"]
    budget = saved_config.get("budget_minutes") or 0.0
    if budget != config.budget_minutes:
        hint = f"pass --budget_minutes {budget:g} to continue its plan" if budget else \
            "drop --budget_minutes (give --max_epoch to train it further)"
        raise CheckpointError(f"cannot resume from {path}: it was "
                              + (f"planned for --budget_minutes {budget:g} "
                                 f"({saved_config.get('max_epoch')} epochs)" if budget else
                                 "not planned by a time budget")
                              + f"; {hint}.")
    adopted = {}
    anchor = saved_config.get("plan_anchor", ())
    if not (isinstance(anchor, (list, tuple)) and len(anchor) in (0, 4)
            and all(contents.is_number(v) for v in anchor)):
        raise CheckpointError(f"{path} holds a damaged plan_anchor ({anchor!r}); resume from "
                              f"another checkpoint with --resume N.")
    if budget:  # the budget was planned when the run began; resuming keeps that plan
        adopted = {"max_epoch": saved_config.get("max_epoch", config.max_epoch),
                   "final_epoch_share": saved_config.get("final_epoch_share", 1.0),
                   "lr_decay_epochs": tuple(saved_config.get("lr_decay_epochs", ())),
                   "warmup_epochs": saved_config.get("warmup_epochs", config.warmup_epochs),
                   "plan_anchor": tuple(saved_config.get("plan_anchor", ()))}
    planned = copy.copy(config)  # the run as it goes on, the plan adopted
    for key, value in adopted.items():
        setattr(planned, key, value)
    keys = RUN_DEFINING_KEYS + ([] if data_digest is None else ["data"])
    current = dict(planned.to_dict(), data=data_digest)
    saved = dict(ckpt["config"], data=ckpt.get("data"))
    diffs = config_differences(saved, current, keys)
    if diffs:
        what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in diffs)
        recipe = saved_config.get("recipe", "course")
        hint = f" (it was trained with --recipe {recipe})" if recipe != config.recipe else ""
        raise CheckpointError(f"cannot resume from {path}: the run differs ({what}). Use the "
                              f"same flags{hint} and data, or another --modeldir for a new "
                              f"run.")
    if saved_config.get("lr_schedule", "step") != "step" and \
            saved_config.get("max_epoch") != planned.max_epoch:
        raise CheckpointError(f"cannot resume from {path} with --max_epoch "
                              f"{planned.max_epoch}: its {saved_config['lr_schedule']} "
                              f"schedule spans the run's {saved_config.get('max_epoch')} "
                              f"epochs; pass --max_epoch {saved_config.get('max_epoch')}.")
    # The optimizer state, once the flags (which shape its parameter groups) agree.
    problem = contents.optimizer_fit_problem(ckpt["optimizer"], parameters)
    if problem:
        raise CheckpointError(f"{path} does not fit this network: {problem}.")
    return adopted


def resume_source(modeldir: str, resume, log):
    """(path, checkpoint) to resume from; CheckpointError when there is none: a resume that
    finds nothing refuses rather than start over in a folder that may hold a model-best."""
    if resume != "latest":
        path = checkpoints.find_checkpoint(modeldir, int(resume))
        return path, read_checkpoint(path, for_resume=True)
    path, ckpt = checkpoints.newest_resumable(modeldir, log)
    if ckpt is None:
        kept = f" (only {checkpoints.BEST}, which is kept)" \
            if os.path.lexists(checkpoint_path(modeldir, "best")) else ""
        anew = "pass --overwrite instead to start anew over its files, or choose another " \
               "--modeldir" if kept or checkpoints.run_records(modeldir) else \
            "drop --resume to start a new run"
        raise CheckpointError(f"--resume: {modeldir} holds no numbered or interrupted "
                              f"checkpoint{kept}, so there is nothing to resume; {anew}.")
    return path, ckpt


def later_files(resume, path: str, ckpt: dict, overwrite: bool, modeldir: str,
                max_epoch: int) -> list:
    """The checkpoints past the one resumed from; refused unless --overwrite allows dropping
    them (and nothing to train drops nothing)."""
    epoch = ckpt["epoch"]
    if resume == "latest":  # whatever lies further on could not be loaded (and was named)
        return []
    later = checkpoints.later_files(modeldir, epoch, ckpt["step"], path)
    if later and not overwrite and epoch < max_epoch:
        raise CheckpointError(f"--resume {resume} would train again from epoch {epoch} and "
                              f"replace what {modeldir} holds past it ({', '.join(later)}); "
                              f"pass --overwrite as well to drop those and retrain from epoch "
                              f"{epoch}, or --resume alone to continue from the newest.")
    return later


# --------------------------------------------------------------------------------------------
# Restoring

def saved_normalization(ckpt: dict, path: str, config, device):
    """The channel (mean, std) on device a checkpoint gives --normalize dataset; None under
    another --normalize. CheckpointError when --normalize dataset finds none."""
    saved = ckpt.get("normalization")
    if config.normalize != "dataset":
        return None
    if saved is None:
        raise CheckpointError(f"{path} holds no channel statistics, so it cannot be used with "
                              f"--normalize dataset.")
    return saved["mean"].to(device), saved["std"].to(device)


def restore(model, ckpt: dict, path: str):
    """Put everything a checked checkpoint holds back into model (weights, optimizer, loss scale,
    weight average, random states, channel statistics, epoch and history); return (step, partial)
    of the epoch it stopped in."""
    try:
        model.network.load_state_dict(ckpt["model"])
        model.optimizer.load_state_dict(ckpt["optimizer"])
        restore_scaler(model.scaler, ckpt["scaler"], model.log)
        if model.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"{path} holds no weight average, which --ema "
                                      f"{model.config.ema} needs; resume without --ema.")
            model.ema.load_state_dict(ckpt["ema"])
        if model.lookahead is not None:
            if ckpt.get("lookahead") is None:
                raise CheckpointError(f"{path} holds no lookahead weights, which --lookahead "
                                      f"needs; resume without --lookahead.")
            model.lookahead.load_state_dict(ckpt["lookahead"])
        contents.restore_rng_states(ckpt["rng"])
        model.runtime.mean_std = saved_normalization(ckpt, path, model.config,
                                                     model.runtime.device)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:  # what the checks cannot see
        raise CheckpointError(f"{path} could not be restored ({e}); resume from another "
                              f"checkpoint with --resume N.") from None
    model.epoch = ckpt["epoch"]
    model.history = list(ckpt["metrics"])
    step = ckpt["step"]
    model.log(f"resuming from {path}: {model.epoch} epoch{'' if model.epoch == 1 else 's'} done"
              + (f", {step} steps into epoch {model.epoch + 1}" if step else ""))
    return step, ckpt.get("partial") or None


def restore_scaler(scaler, saved: dict, log) -> None:
    # --amp may change on resume: a scaler only exists under fp16, so a run saved under bf16 or
    # full precision has none to give, and a scaler saved under fp16 has no use without it.
    if scaler.is_enabled() and saved:
        scaler.load_state_dict(saved)
    elif scaler.is_enabled():
        log("the checkpoint was saved without fp16, so the loss scale starts afresh.")
