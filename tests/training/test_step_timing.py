"""One way to time a training step (trainer.training.step_timing): the run's own step, through
its own training network, with the run put back exactly as it was afterwards."""
import pytest
import torch

from Model import MyModel
from trainer.evaluation.evaluate import to_image_tensor
from trainer.training import step_timing, steps
from test_training import data, tiny_config


def images_and_labels(n: int = 16):
    x, y = data(n)
    return to_image_tensor(x), torch.as_tensor(y, dtype=torch.int64)


def trained_a_little(tmp_path, **options) -> MyModel:
    """A tiny model two real steps into a run, so that its optimizer holds momentum."""
    model = MyModel(tiny_config(tmp_path, **options), log=lambda *a: None)
    images, labels = images_and_labels()
    steps.begin_epoch(model, 1)
    for i in range(2):
        x = model.runtime.prepare_images(images[8 * i:8 * i + 8], True)
        steps.set_rates(model, 1, i, 2)
        steps.train_step(model, x, labels[8 * i:8 * i + 8])
        steps.after_step(model, 1, i, 2)
    return model


def everything(model: MyModel) -> dict:
    """Every tensor a run's future depends on, copied."""
    state = {f"network.{k}": v.clone() for k, v in model.network.state_dict().items()}
    for i, s in model.optimizer.state_dict()["state"].items():
        state[f"momentum.{i}"] = s["momentum_buffer"].clone()
    for name, average in (("ema", model.ema), ("lookahead", model.lookahead)):
        if average is not None:
            state.update({f"{name}.{k}": v.clone() for k, v in average.state_dict().items()})
    state["lr"] = torch.tensor([g["lr"] for g in model.optimizer.param_groups])
    state["rng"] = torch.get_rng_state()
    return state


@pytest.mark.parametrize("options", [{}, {"lookahead": True, "lookahead_every": 1, "ema": 0.9,
                                          "label_smoothing": 0.1, "l1": 1e-4}])
def test_timing_leaves_the_run_exactly_as_it_was(tmp_path, options):
    model = trained_a_little(tmp_path, **options)
    before = everything(model)
    assert any(k.startswith("momentum.") for k in before)
    images, labels = images_and_labels()
    with step_timing.timing(model, images, labels) as timer:
        seconds = timer.steps(3)
    assert len(seconds) == 3 and all(s > 0 for s in seconds)
    after = everything(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"
    assert all(p.grad is None for p in model.network.parameters())

    # And the run goes on as if nothing had been timed.
    twin = trained_a_little(tmp_path / "twin", **options)
    for m in (model, twin):
        x = m.runtime.prepare_images(images[:8], False)  # no random crop: the same batch
        steps.train_step(m, x, labels[:8])
    for (k, a), b in zip(model.network.state_dict().items(), twin.network.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs from a run that was not timed"


def test_the_timed_step_is_the_runs_own(tmp_path):
    """Through the model's training network (DDP's wrapper, a compiled network), with its loss
    (label smoothing) and its rates."""
    model = MyModel(tiny_config(tmp_path, label_smoothing=0.3), log=lambda *a: None)
    calls = []
    steps.begin_epoch(model, 1)
    inner = model.train_net
    model.train_net = lambda x: calls.append(len(x)) or inner(x)
    images, labels = images_and_labels()
    with step_timing.StepTimer(model, images, labels) as timer:
        timer.steps(3)
    assert calls == [8, 8, 8]  # the run's batches of 8, cycling through the epoch's two


def test_a_step_takes_the_clocks_time(tmp_path):
    model = MyModel(tiny_config(tmp_path), log=lambda *a: None)
    readings = iter([10.0, 10.25, 20.0, 20.5])
    images, labels = images_and_labels()
    with step_timing.StepTimer(model, images, labels, clock=readings.__next__) as timer:
        assert timer.steps(2) == [0.25, 0.5]
    assert timer.steps_per_epoch == 2 and timer.images_per_step == 8
