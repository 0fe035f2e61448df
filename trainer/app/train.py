"""--mode train (and each run of a sweep): one training run as the command line makes it: the
model folder's checks and lock, the data, training, TensorBoard logging and curves.png."""
import contextlib
import copy
import os
import sys
import time
from typing import NamedTuple

import numpy as np
import torch

import DataReader
import Model
from configure import Config, ConfigError
from trainer.app import dataset, evaluate
from trainer.app.console import USER_ERRORS, announce
from trainer.evaluation.evaluate import to_image_tensor, views
from trainer.app import parallelism
from trainer.parallel import cores, distributed
from trainer.reports import plots
from trainer.reports import tensorboard_log
from trainer.run import checkpoints, state
from trainer.training import budget, runtime, sizing


def check_modeldir(config: Config, resume, overwrite: bool) -> None:
    """What can be refused about --modeldir before any data is read."""
    modeldir = config.modeldir
    if os.path.exists(modeldir) and not os.path.isdir(modeldir):
        raise checkpoints.CheckpointError(f"--modeldir {modeldir} is a file, not a folder; choose "
                                          f"another --modeldir.")
    if isinstance(resume, int) and not os.path.isdir(modeldir):
        raise checkpoints.CheckpointError(f"--modeldir {modeldir} does not exist, so there is no "
                                          f"checkpoint {resume} to resume from; check --modeldir.")
    if resume is None and not overwrite:  # --overwrite deletes only once training starts
        checkpoints.check_fresh_start(modeldir, overwrite=False)


def make_modeldir(modeldir: str) -> None:
    """Create --modeldir (and its parents); CheckpointError, one sentence, if that fails."""
    try:
        os.makedirs(modeldir, exist_ok=True)
    except OSError as e:
        raise checkpoints.CheckpointError(f"cannot create --modeldir {modeldir} ({e.strerror}); "
                                          f"choose a folder you can write to.") from None


def choose_width(config: Config, x_train, y_train, x_valid, started: float,
                 context: distributed.Context, test_after: budget.TestAfter = None) -> None:
    """--width_scale 0 of a fresh run: the width sizing.resolve chooses, timing the models this
    run would build (on a copy of the training split on the run's device), leaving time for
    the test that follows with --test (``test_after``)."""
    device = runtime.select_device(config.device)
    images = to_image_tensor(x_train).to(device)
    labels = torch.from_numpy(np.asarray(y_train, dtype=np.int64)).to(device)
    sizing.resolve(config, lambda cfg: Model.MyModel(cfg, context=context), images, labels,
                   0 if x_valid is None else len(x_valid), started,
                   log=print if context.is_main else (lambda *a: None),
                   test_passes=0 if test_after is None else
                   len(test_after.images) * views(test_after.tta))


class Workers(NamedTuple):
    """The processes a training command starts (trainer.parallel.launch), the cores they are
    pinned to, and the configuration values decided here that each of them takes
    (trainer.parallel.launch.decided)."""
    count: int
    cores: tuple
    decided: dict


def use_cores(config: Config, resume, overwrite: bool,
              context: distributed.Context) -> "Workers | None":
    """How a training command uses the CPU (trainer.app.parallelism): None when this process
    trains (with a thread per usable core), or the Workers to start instead. config records the
    count (--cpu_processes) and, where it was settled here, the precision (--amp). A resumed run
    keeps its checkpoint's count; under torchrun the count is torchrun's."""
    if context.distributed:
        config.cpu_processes = context.world_size
        return None
    if runtime.select_device(config.device).type != "cpu":
        config.cpu_processes = 1
        return None
    if config.cpu_processes == 0 and resume is not None and os.path.isdir(config.modeldir):
        _, ckpt = state.resume_source(config.modeldir, resume, lambda *a: None)
        config.cpu_processes = int(ckpt["config"].get("cpu_processes") or 1)
    if config.cpu_processes == 0:  # refused at once, not after the timing
        refuse_early(config, resume, overwrite)
    decision = parallelism.decide(config, cores.usable())
    if decision.amp is not None:
        config.amp = decision.amp
    if decision.processes == 1:
        torch.set_num_threads(decision.threads)
        config.cpu_processes = 1
        return None
    decided = {"cpu_processes": decision.processes}
    if decision.amp is not None:
        decided["amp"] = decision.amp
    return Workers(decision.processes, decision.cores, decided)


def refuse_early(config: Config, resume, overwrite: bool) -> None:
    """What train_run would refuse, checked before a minute is spent timing the cores: a missing
    TensorBoard, a folder another run holds or that this command may not use, and data that is
    missing (fetched now where --download allows, so that no download slows the timing)."""
    if config.tensorboard:
        tensorboard_log.require_tensorboard()
        tensorboard_log.check_logdir(config.tensorboard)
    if os.path.isdir(config.modeldir):
        with checkpoints.RunLock(config.modeldir):  # held by a running run: refused here
            pass
    check_modeldir(config, resume, overwrite)
    dataset.ensure_data(config)


def network_name(config: Config) -> str:
    return Model.describe(config.to_dict())


def train_run(config: Config, resume=None, overwrite: bool = False, started: float = None,
              context: distributed.Context = distributed.SINGLE,
              test: evaluate.TestAfterTraining = None) -> list:
    """One training run as the command line makes it (lock, checks, data, training, curves);
    return its metrics, one dict per epoch. A --budget_minutes counts from ``started``
    (time.monotonic(); default: now). With ``test`` (--test), the newest checkpoint is then
    tested (evaluate.test_trained_run), even when there was nothing left to train. Under torchrun
    every rank runs this; rank 0 alone takes the lock and writes files."""
    started = time.monotonic() if started is None else started
    main_rank = context.is_main
    with contextlib.ExitStack() as held:
        # Under torchrun a refusal on one rank (rank 0 alone takes the lock) stops every rank
        # here, and rank 0 says it: the others would otherwise report losing contact.
        with distributed.all_or_none(ConfigError, *USER_ERRORS):
            if config.tensorboard:  # an optional extra: checked before anything else happens
                tensorboard_log.require_tensorboard()
                if main_rank:
                    tensorboard_log.check_logdir(config.tensorboard)
            # One run per folder: an existing folder is locked (and checked) before the data is
            # read, so a second run is refused at once; a new one is made once the data is usable.
            if main_rank and os.path.isdir(config.modeldir):
                held.enter_context(checkpoints.RunLock(config.modeldir))
            check_modeldir(config, resume, overwrite)
            if resume is not None and os.path.isdir(config.modeldir):  # before any download
                sizing.resolve_from_checkpoint(config, resume)  # its checkpoint's width
                # On a copy: the run itself adopts what its checkpoint planned when it resumes.
                Model.MyModel(copy.copy(config), log=lambda *a: None,
                              context=context).check_resumable(resume, overwrite)
            if context.local_rank == 0:  # one download per machine, which the others wait for
                dataset.ensure_data(config)
        with distributed.all_or_none(ConfigError, *USER_ERRORS):
            x_train, y_train, x_test, y_test = dataset.load(config)
            if test is not None:  # refused now rather than after the training
                evaluate.check_test_set(config, y_test, "drop --test")
            x_valid = y_valid = None
            if not config.train_all:
                x_train, y_train, x_valid, y_valid = DataReader.train_valid_split(
                    x_train, y_train, config.split_index)
            config.validate(n_train=len(x_train), world_size=context.world_size)
            # --test: the test follows the training, within a budget too
            test_after = None if test is None else budget.TestAfter(x_test, test.config.tta)
            if config.width_scale == 0:  # --recipe speed: the width for the budget
                choose_width(config, x_train, y_train, x_valid, started, context, test_after)
            if main_rank and not os.path.isdir(config.modeldir):
                make_modeldir(config.modeldir)
                held.enter_context(checkpoints.RunLock(config.modeldir))
        model = Model.MyModel(config, context=context)
        model.started, model.test_after = started, test_after
        print(f"training {network_name(config)} on {len(x_train)} images"
              + (f", validating on {len(x_valid)}" if x_valid is not None else "")
              + f", device {model.device}"
              + (f", {context.describe()}" if context.distributed else ""), flush=True)
        if config.tensorboard:
            model.epoch_callbacks.append(tensorboard_log.EpochLogger(config.tensorboard, held))
        history = model.train(x_train, y_train, x_valid, y_valid, resume=resume,
                              overwrite=overwrite)
        if test is not None:  # while the lock keeps other runs out of the folder it writes in
            evaluate.test_trained_run(evaluate.in_precision(test, config.amp),
                                      (x_test, y_test), context)
    # A bonus: without matplotlib, no curves.png; nothing trained, nothing redrawn.
    if main_rank and model.epochs_trained and plots.matplotlib_available():
        try:
            print(f"wrote {plots.draw_curves(config.modeldir)}")
        except plots.PlotError as e:
            print(f"warning: no curves: {e}", file=sys.stderr)
    return history


def sweep_train(run_config: Config, resume, overwrite: bool) -> list:
    """One run of a sweep, as sweep.run calls it: its own configuration printed (recipe and
    derived values resolved) and the whole --budget_minutes, counted from its own start. The runs
    of a sweep train in this process, one after another: a thread per usable core."""
    if run_config.cpu_processes > 1:
        raise ConfigError(f"--cpu_processes {run_config.cpu_processes}: a sweep trains its runs "
                          f"in this one process; use --cpu_processes 1 (or 0), or train each run "
                          f"with --mode train.")
    run_config.cpu_processes = 1
    torch.set_num_threads(cores.usable().count)
    announce(run_config, writes_record=True)
    return train_run(run_config, resume, overwrite, started=time.monotonic())
