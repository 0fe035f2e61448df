"""The model folder of one training run: what the run writes there and when.

Before the first epoch the folder is checked (a new run needs one free of another run's files,
or --overwrite, whose removal waits until nothing else can refuse the run) and prepared (a killed
run's temporaries cleared, the checkpoints a retrace replaces dropped), and its records begin:
``config.json`` and ``metrics.csv`` (trainer.run.records). After each epoch the save policy runs:
``model-best.ckpt`` when the validation accuracy is the best so far, ``model-<epoch>.ckpt`` every
--save_interval epochs and at the last, ``interrupted.ckpt`` when a signal stops the run between
them. Under torchrun rank 0 alone writes; the other ranks' folder writes nothing.
"""
import contextlib
import os

from trainer.run import checkpoints, records, state
from trainer.run.checkpoints import INTERRUPTED, checkpoint_path


class RunFolder:
    """``modeldir`` as one run (``model``, see trainer.run.state) writes it."""

    def __init__(self, model):
        self.model = model
        self.modeldir = model.config.modeldir
        self.writes = model.dist.is_main
        self.metrics_file = records.MetricsFile(self.modeldir) if self.writes else None
        self.data = {}  # what config.json says of the data (start_records)

    def check_fresh_start(self, overwrite: bool) -> None:
        """A new run: refuse a folder holding another run's files, unless overwrite (which
        ``clear_earlier_run`` acts on once nothing else can refuse the run)."""
        if self.writes and not overwrite:
            checkpoints.check_fresh_start(self.modeldir, False, self.model.log)

    def clear_earlier_run(self, overwrite: bool) -> None:
        """A new run with overwrite: remove another run's files from the folder."""
        if self.writes and overwrite:
            checkpoints.check_fresh_start(self.modeldir, True, self.model.log)

    def prepare(self, later: list, epoch: int):
        """Before training: clear a killed run's temporaries, drop the checkpoints a retrace
        replaces (``later``, with --overwrite, resuming from ``epoch``); return the validation
        accuracy of a model-best.ckpt to keep unless beaten (one of a later epoch, kept from
        before a kill), or None."""
        log = self.model.log
        os.makedirs(self.modeldir, exist_ok=True)
        checkpoints.clean_stale_temporaries(self.modeldir)
        if later:  # --resume N --overwrite: the run is trained again from epoch N
            for name in later:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.modeldir, name))
            checkpoints.drop_best_past(self.modeldir, epoch, log)
            log(f"--overwrite: dropped {', '.join(later)} to train again from epoch {epoch}.")
        return checkpoints.best_accuracy(self.modeldir, log)

    def start_records(self, data: dict, history: list) -> None:
        """config.json (the run's flags, device and ``data``); metrics.csv holding ``history``."""
        self.data = data
        if self.writes:
            model = self.model
            records.write_config(self.modeldir, model.config.to_dict(), model.runtime.device, data)
            self.metrics_file.start(history)

    def plan_changed(self) -> None:
        """config.json again, once a time budget planned the run anew (budget.replan)."""
        if self.writes:
            records.write_config(self.modeldir, self.model.config.to_dict(),
                                 self.model.runtime.device, self.data)

    def record(self, metrics: dict) -> None:
        """One finished epoch's row of metrics.csv."""
        if self.writes:
            self.metrics_file.append(metrics)

    def save_epoch(self, epoch: int, metrics: dict, best_before, data_digest: str):
        """The save policy after a finished epoch: model-best.ckpt when its validation accuracy
        beats ``best_before`` (None: nothing to beat), model-<epoch>.ckpt every --save_interval
        epochs and at the last (superseding interrupted.ckpt). Return the numbered path or None."""
        cfg = self.model.config
        if "valid_acc" in metrics and (best_before is None or metrics["valid_acc"] > best_before):
            state.save(self.model, checkpoint_path(self.modeldir, "best"), data_digest=data_digest)
        saved = None
        if epoch % cfg.save_interval == 0 or epoch == cfg.max_epoch:
            saved = checkpoint_path(self.modeldir, epoch)
            state.save(self.model, saved, data_digest=data_digest)
            if self.writes:
                with contextlib.suppress(FileNotFoundError):  # superseded by this one
                    os.remove(os.path.join(self.modeldir, INTERRUPTED))
        return saved

    def save_interrupted(self, step: int = 0, partial: dict = None, data_digest: str = "") -> str:
        """interrupted.ckpt: the run stopped ``step`` steps into its next epoch; return its path."""
        path = os.path.join(self.modeldir, INTERRUPTED)
        state.save(self.model, path, step=step, partial=partial, data_digest=data_digest)
        return path
