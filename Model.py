"""The course's model: ``MyModel`` trains a ResNet, scores its checkpoints and predicts.

A short face over the machinery in ``trainer/``: the runtime (device, precision, the networks and
optimizer, trainer.training.runtime), the training loop (trainer.training.loop), the checkpoint
state and its checks (trainer.run.state), the model folder's files (trainer.run.folder and
trainer.run.checkpoints) and evaluation (trainer.evaluation.evaluate).
"""
import time

import numpy as np
import torch
from tqdm import tqdm

from DataReader import fingerprint
from configure import Config
from trainer.evaluation import evaluate as evaluation
from trainer.parallel import distributed
from trainer.reports import reports
from trainer.run import checkpoints, state
from trainer.training import loop, runtime, steps
from trainer.training.ema import WeightAverage
from trainer.training.lookahead import Lookahead
# The names main.py and the tests know as Model.<name>:
from trainer.run.checkpoints import (INTERRUPTED, CheckpointError, checkpoint_path,  # noqa: F401
                                     list_checkpoints)
from trainer.run.state import describe  # noqa: F401
from trainer.training.loop import TrainingError, TrainingStopped  # noqa: F401
from trainer.training.runtime import parameter_groups, select_device  # noqa: F401
from trainer.training.stop_requests import PAUSE_ENV  # noqa: F401


class MyModel:
    """A ResNet with its optimizer, trained and evaluated on one device.

    ``train`` fits it; ``test_or_validate`` scores saved checkpoints; ``predict_prob`` gives class
    probabilities of the network as it is (load a checkpoint first with ``load``).
    """

    def __init__(self, config: Config, log=tqdm.write, context=distributed.SINGLE):
        self.config = config
        self.dist = context  # rank and world size under torchrun
        self.log = log if context.is_main else (lambda *a: None)
        self.runtime = runtime.Runtime(config, context)
        self.device, self.amp_dtype = self.runtime.device, self.runtime.amp_dtype
        self.network = runtime.build(config, self.runtime)
        runtime.configure_backends(config, self.runtime)
        self.optimizer = runtime.optimizer(self.network, config)
        self.ema = WeightAverage(self.network, config.ema) if config.ema else None
        self.lookahead = Lookahead(self.network, config.lookahead_decay,
                                   config.lookahead_every) if config.lookahead else None
        self.scaler = runtime.scaler(self.runtime)
        self.forward_net = runtime.forward_network(self.network, config)
        self.train_net = None  # forward_net, wrapped in DistributedDataParallel under torchrun
        self.history = []
        self.epoch = 0
        self.epoch_callbacks = []  # each called with an epoch's metrics once it is recorded
        self.started = time.monotonic()  # when the run began, for --budget_minutes
        self.test_after = None  # --test: a budget.TestAfter, which the budget leaves time for
        self.epochs_trained = 0  # by the last call of train in this process

    def train(self, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray = None,
              y_valid: np.ndarray = None, resume=None, overwrite: bool = False) -> list:
        """Train for config.max_epoch epochs; return the metrics of every epoch (a list of dicts).

        x_* are (N, 3072) uint8 rows, y_* (N,) int labels. ``resume`` is None, "latest" or an epoch.
        Without it, a modeldir that holds another run's checkpoints is refused, or with
        ``overwrite`` emptied of them first. The command line holds ``checkpoints.RunLock``
        meanwhile.
        Under torchrun every rank calls this with the same data; rank 0 alone writes files.
        """
        digest = fingerprint(x_train, y_train)
        return loop.fit(self, x_train, y_train, x_valid, y_valid, digest, resume, overwrite)

    def check_resumable(self, resume, overwrite: bool = False) -> dict:
        """What can be refused about resuming before any data is read; return the checkpoint a
        resume would start from. This model's config adopts what the checkpoint's run planned (a
        --budget_minutes run's epochs)."""
        return loop.open_resume(self, resume, overwrite)[1]

    def objective(self, logits: torch.Tensor, y: torch.Tensor):
        """(what training minimizes, the cross-entropy it reports); see steps.objective."""
        return steps.objective(self.config, self.network, logits, y)

    def checkpoint_file(self, epoch) -> str:
        return checkpoints.find_checkpoint(self.config.modeldir, epoch)

    def load(self, checkpoint) -> dict:
        """Load weights from a checkpoint (number, "best" or path) into the network; return it."""
        path = checkpoint if isinstance(checkpoint, str) and checkpoint != "best" else \
            self.checkpoint_file(checkpoint)
        ckpt = checkpoints.read_checkpoint(path)
        state.check_fit(ckpt, path, self.config, self.network)
        # A run with --ema is judged by its weight average, so test and predict use that.
        weights = ckpt["model"] if ckpt.get("ema") is None else ckpt["ema"]
        self.network.load_state_dict(weights)
        if self.ema is not None:  # what evaluation runs on, built with --ema
            self.ema.load_state_dict(weights)
        self.runtime.mean_std = state.saved_normalization(ckpt, path, self.config, self.device)
        return ckpt

    def validate(self, x: np.ndarray, y: np.ndarray):
        """(accuracy in [0, 1], mean cross-entropy) of the network as it is on (x, y)."""
        return evaluation.validate(self, x, y)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return self.validate(x, y)[0]

    def evaluate_checkpoints(self, x: np.ndarray, y: np.ndarray, checkpoint_list) -> list:
        """Score each listed checkpoint (epoch numbers or "best") on (x, y): a list of dicts with
        "checkpoint" (file name), "epoch", "weights", "accuracy", "loss", "images" and
        "predictions"."""
        return evaluation.evaluate_checkpoints(
            self, x, y, checkpoint_list,
            lambda weights: reports.weight_summary(reports.weight_magnitudes(weights)))

    def test_or_validate(self, x: np.ndarray, y: np.ndarray, checkpoint_num_list,
                         set_name: str = "test") -> dict:
        """Accuracy of each listed checkpoint on (x, y): {epoch: accuracy in [0, 1]}; a line
        each."""
        results = {}
        scored = self.evaluate_checkpoints(x, y, checkpoint_num_list)
        for r, num in zip(scored, checkpoint_num_list):
            results[num] = r["accuracy"]
            self.log(f"{r['checkpoint']}  {set_name} accuracy {100 * r['accuracy']:.2f}%  "
                     f"loss {r['loss']:.4f}  ({r['images']} images)")
        return results

    evaluate = test_or_validate  # the course skeleton's name

    def predict_prob(self, x: np.ndarray) -> np.ndarray:
        """(N, 3072) rows in [0, 255] -> (N, num_classes) float32 class probabilities."""
        logits = evaluation.logits(self, x, "predicting")
        return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32)
