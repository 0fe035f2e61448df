"""CUDA paths: mixed precision, cudnn benchmark, non-blocking copies. Skipped without a GPU.

The precision policy itself (what ``--amp auto`` picks on each device) is checked on the CPU.
"""
import numpy as np
import pytest
import torch

from cifar_files import make_batch
from configure import Config
from ImageUtils import draw_batch_crop_flip, preprocess_batch
from Model import MyModel
from trainer.evaluation.evaluate import logits as logits_of
from trainer.run.checkpoints import read_checkpoint
from trainer.training import runtime

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny(tmp_path, name, **overrides) -> MyModel:
    values = dict(resnet_size=1, first_num_filters=8, batch_size=16, max_epoch=2, save_interval=1,
                  lr_decay_epochs=(), modeldir=str(tmp_path / name), eval_batch_size=64)
    values.update(overrides)
    return MyModel(Config(**values), log=lambda *a: None)


def test_amp_auto_is_off_on_cpu_and_explicit_choices_hold(tmp_path):
    assert tiny(tmp_path, "a", device="cpu").amp_dtype is None
    assert tiny(tmp_path, "b", device="cpu", amp="bf16").amp_dtype == torch.bfloat16
    assert tiny(tmp_path, "c", device="cpu", amp="off").amp_dtype is None
    fp16 = tiny(tmp_path, "d", device="cpu", amp="fp16")
    assert fp16.amp_dtype == torch.float16 and fp16.scaler.is_enabled()


# A machine of four GPUs, by compute capability: bf16 is native from 8.0 (Ampere) on; a T4 or
# V100 only emulates it, and torch.cuda.is_bf16_supported() says yes there all the same.
GPUS = {0: (8, 0), 1: (7, 5), 2: (7, 0), 3: (9, 0)}  # A100, T4, V100, H100
CURRENT = 1  # torch.cuda.current_device(): a T4, so that asking it instead of the run's shows


def _capability(device=None):
    index = torch.device(device).index if isinstance(device, (str, torch.device)) else device
    return GPUS[CURRENT if index is None else index]


@pytest.mark.parametrize("device, expected", [
    ("cuda:0", torch.bfloat16), ("cuda:1", torch.float16), ("cuda:2", torch.float16),
    ("cuda:3", torch.bfloat16), ("cuda", torch.float16)])
def test_amp_auto_picks_bf16_only_where_the_runs_own_gpu_has_it_natively(monkeypatch, device,
                                                                          expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(GPUS))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: CURRENT)
    monkeypatch.setattr(torch.cuda, "get_device_capability", _capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",  # as torch answers: the current device
                        lambda including_emulation=True:
                        including_emulation or _capability()[0] >= 8)
    monkeypatch.setattr(torch.version, "hip", None)
    rt = runtime.Runtime(Config(device=device, amp="auto"))
    assert rt.device == torch.device(device)
    assert rt.amp_dtype == expected
    assert runtime.scaler(rt).is_enabled() == (expected == torch.float16)  # fp16's loss scaler


@needs_cuda
def test_amp_auto_on_cuda_picks_bf16_where_the_gpu_has_it_natively(tmp_path):
    model = tiny(tmp_path, "m", device="cuda")
    # Not the query the code makes: the device's properties, read here.
    major = torch.cuda.get_device_properties(model.device).major
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert model.amp_dtype == expected, torch.cuda.get_device_name(model.device)
    assert model.scaler.is_enabled() == (expected == torch.float16)
    assert torch.backends.cudnn.benchmark


@needs_cuda
def test_batched_preprocessing_on_cuda_equals_cpu():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 3, 32, 32), dtype=np.uint8))
    offsets, flips = draw_batch_crop_flip(64, torch.Generator().manual_seed(0))
    cpu = preprocess_batch(x, True, offsets, flips)
    gpu = preprocess_batch(x.cuda(), True, offsets.cuda(), flips.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("amp", ["auto", "fp16", "off"])
def test_cuda_training_learns_and_checkpoints_load_on_cpu(tmp_path, amp):
    x, y = make_batch(64, np.random.default_rng(0))
    model = tiny(tmp_path, "m", device="cuda", amp=amp, max_epoch=4)
    history = model.train(x, y)
    assert all(np.isfinite(m["train_loss"]) for m in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ckpt = read_checkpoint(str(tmp_path / "m" / "model-4.ckpt"))
    on_cpu = tiny(tmp_path, "cpu", device="cpu")
    on_cpu.network.load_state_dict(ckpt["model"])
    # Full-precision logits of the same weights agree across devices.
    gpu_logits = tiny(tmp_path, "g", device="cuda", amp="off")
    gpu_logits.network.load_state_dict(ckpt["model"])
    torch.testing.assert_close(logits_of(gpu_logits, x).cpu(), logits_of(on_cpu, x), rtol=1e-3, atol=1e-3)
