"""TensorBoard logging (tensorboard_log.py). The tensorboard package is optional: the test that
reads event files back is skipped without it; the others run everywhere."""
import os
import sys

import pytest

from trainer.reports import tensorboard_log


def epoch_metrics(epoch, valid=True):
    """One epoch's metrics as Model hands them to its epoch callbacks."""
    metrics = {"epoch": epoch, "lr": 0.1 if epoch <= 2 else 0.01, "train_loss": 2.0 / epoch,
               "train_acc": 0.3 + 0.1 * epoch, "seconds": 12.5, "images_per_second": 3600.0}
    if valid:
        metrics.update(valid_loss=2.2 / epoch, valid_acc=0.25 + 0.1 * epoch)
    return metrics


class RecordingWriter:
    """Stands in for a SummaryWriter: records what it is asked to write."""

    def __init__(self):
        self.scalars, self.flushes = [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1


def hide_modules(monkeypatch, *tops):
    """Make ``import top`` (and its submodules) fail as if top were not installed."""
    for top in tops:
        for name in list(sys.modules):
            if name.startswith(top + "."):
                monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, top, None)


def test_log_epoch_writes_each_metric_at_its_epoch_and_flushes():
    writer, m = RecordingWriter(), epoch_metrics(3)
    tensorboard_log.log_epoch(writer, m)
    assert sorted(writer.scalars) == sorted([
        ("lr", m["lr"], 3), ("loss/train", m["train_loss"], 3), ("loss/valid", m["valid_loss"], 3),
        ("accuracy/train", m["train_acc"], 3), ("accuracy/valid", m["valid_acc"], 3),
        ("time/seconds", 12.5, 3), ("time/images_per_second", 3600.0, 3)])
    assert writer.flushes == 1


def test_log_epoch_skips_what_the_run_does_not_have():
    writer = RecordingWriter()
    tensorboard_log.log_epoch(writer, epoch_metrics(1, valid=False))
    tensorboard_log.log_epoch(writer, dict(epoch_metrics(2), valid_loss=None, valid_acc=None))
    tags = {tag for tag, _, _ in writer.scalars}
    assert tags == {"lr", "loss/train", "accuracy/train", "time/seconds",
                    "time/images_per_second"}


def test_without_tensorboard_open_writer_says_how_to_install_it(tmp_path, monkeypatch):
    hide_modules(monkeypatch, "tensorboard", "torch.utils.tensorboard")
    logdir = os.path.join(tmp_path, "tb")
    with pytest.raises(tensorboard_log.TensorBoardMissing) as refused:
        tensorboard_log.open_writer(logdir)
    message = str(refused.value)
    assert "not installed" in message
    assert "pip install tensorboard" in message and "requirements-dev.txt" in message
    assert "\n" not in message
    assert not os.path.exists(logdir)


def test_open_writer_refuses_a_file_for_a_folder_or_on_the_way_to_one(tmp_path):
    pytest.importorskip("tensorboard")
    path = tmp_path / "not_a_folder"
    path.write_text("")
    with pytest.raises(tensorboard_log.TensorBoardError, match="is a file"):
        tensorboard_log.open_writer(str(path))
    with pytest.raises(tensorboard_log.TensorBoardError, match="cannot make the --tensorboard "
                                                               "folder .*not_a_folder/sub"):
        tensorboard_log.open_writer(str(path / "sub"))


def test_logged_epochs_can_be_read_back_while_the_writer_is_open(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = str(tmp_path / "tb")
    writer = tensorboard_log.open_writer(logdir)
    try:
        for epoch in (1, 2, 3):
            tensorboard_log.log_epoch(writer, epoch_metrics(epoch, valid=epoch < 3))
        events = EventAccumulator(logdir)  # before close, as TensorBoard sees a running training
        events.Reload()
    finally:
        writer.close()
    assert set(events.Tags()["scalars"]) == set(tensorboard_log.TAGS.values())
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("accuracy/valid")] == [1, 2]  # none in epoch 3
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([0.1, 0.1, 0.01])
    assert [e.value for e in events.Scalars("accuracy/train")] == pytest.approx([0.4, 0.5, 0.6])


def test_a_resumed_run_replaces_the_epochs_it_trains_again(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = str(tmp_path / "tb")
    first = tensorboard_log.open_writer(logdir)
    for epoch in (1, 2, 3):  # killed in epoch 4; the checkpoint it resumes from is epoch 2's
        tensorboard_log.log_epoch(first, epoch_metrics(epoch))
    first.close()
    resumed = tensorboard_log.open_writer(logdir, purge_step=3)
    for epoch in (3, 4):
        tensorboard_log.log_epoch(resumed, dict(epoch_metrics(epoch), train_loss=10.0 + epoch))
    resumed.close()
    events = EventAccumulator(logdir)
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss/train")]
    assert losses == [(1, 2.0), (2, 1.0), (3, 13.0), (4, 14.0)]
