"""A checkpoint's contents: the structure a loaded one must have (``structure_problem``), whether
its tensors fit this network and optimizer, and the random generators' states as plain types
(``weights_only`` loading admits no numpy objects).

Every function here only looks and says what is wrong (None when nothing is);
trainer.run.checkpoints turns that into a CheckpointError naming the file.
"""
import math
import random

import numpy as np
import torch

_RNG_KEYS = ("python", "numpy", "torch")


def _shown(value) -> str:
    """A value from a file, for a one-line message: short ones as they are, others by type."""
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"a {type(value).__name__}"


def _is_plain(value) -> bool:
    """What Config.to_dict() writes: None, bool, int, float, str, or a list of those."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) and not isinstance(v, (list, tuple)) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def structure_problem(ckpt, for_resume: bool):
    """What is wrong with a loaded checkpoint's structure (None if nothing)."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a dict"
    required = ["model", "config", "epoch"]
    if for_resume:
        required += ["step", "optimizer", "scaler", "rng", "metrics"]
    missing = [k for k in required if k not in ckpt]
    if missing:
        return f"'{missing[0]}' is missing"
    if not _is_int(ckpt["epoch"]) or ckpt["epoch"] < 0:
        return f"'epoch' must be a whole number, not {_shown(ckpt['epoch'])}"
    if not isinstance(ckpt["config"], dict):
        return f"'config' must be a dict, not a {type(ckpt['config']).__name__}"
    for key, value in ckpt["config"].items():
        if not (isinstance(key, str) and _is_plain(value)):
            return f"the config entry {_shown(key)} holds {_shown(value)}, not a plain value"
    model = ckpt["model"]
    if not isinstance(model, dict) or not model:
        return "'model' must be a non-empty state dict"
    for name, value in model.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            return f"'model' entry {_shown(name)} is not a named tensor"
    norm = ckpt.get("normalization")
    if norm is not None and not (isinstance(norm, dict) and all(
            isinstance(norm.get(k), torch.Tensor) and norm[k].shape == (3,)
            and norm[k].is_floating_point() and bool(torch.isfinite(norm[k]).all())
            for k in ("mean", "std")) and bool((norm["std"] > 0).all())):
        return "'normalization' must hold finite channel means and positive deviations"
    ema = ckpt.get("ema")
    if ema is not None and not (isinstance(ema, dict) and ema and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ema.items())):
        return "'ema' (the weight average) must be a state dict of named tensors"
    slow = ckpt.get("lookahead")
    if slow is not None and not (isinstance(slow, dict) and slow and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in slow.items())):
        return "'lookahead' (the slow weights) must be a state dict of named tensors"
    if not for_resume:
        return None
    if not _is_int(ckpt["step"]) or ckpt["step"] < 0:
        return f"'step' must be a whole number, not {_shown(ckpt['step'])}"
    return (_optimizer_problem(ckpt["optimizer"]) or _scaler_problem(ckpt["scaler"])
            or rng_problem(ckpt["rng"]) or _metrics_problem(ckpt["metrics"], ckpt["epoch"])
            or _partial_problem(ckpt.get("partial")))


def _optimizer_problem(opt):
    if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict):
        return "'optimizer' must be an optimizer state dict with a 'state' entry"
    groups = opt.get("param_groups")
    if not isinstance(groups, list) or not groups:
        return "'optimizer' has no parameter groups"
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list) or \
                not all(_is_int(p) for p in group["params"]):
            return "an 'optimizer' parameter group is malformed"
        for key in ("lr", "momentum", "weight_decay"):
            if key in group and not is_number(group[key]):
                return f"the optimizer's {key} is {_shown(group[key])}, not a finite number"
    for index, state in opt["state"].items():
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) or v is None
                                                  for v in state.values()):
            return f"the optimizer state of parameter {_shown(index)} is malformed"
    return None


def _scaler_problem(scaler):
    if not isinstance(scaler, dict):
        return "'scaler' must be a dict"
    expected = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
    if scaler and not all(k in scaler and is_number(scaler[k]) for k in expected):
        return "'scaler' is not a gradient-scaler state"
    return None


def _metrics_problem(metrics, epoch: int):
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        return "'metrics' must be a list of dicts"
    if len(metrics) != epoch:
        return f"'metrics' holds {len(metrics)} epochs, not {epoch}"
    return None


def _partial_problem(partial):
    if partial is None or partial == {}:
        return None
    keys = ("loss_sum", "correct", "seen", "seconds")
    if not isinstance(partial, dict) or not all(is_number(partial.get(k)) for k in keys) or \
            partial["seen"] < 0:
        return "'partial' (the sums of an unfinished epoch) is malformed"
    return None


def state_dict_problem(saved: dict, expected: dict):
    """How the saved model state differs from the network's (None if it fits exactly): missing or
    extra names, shapes, dtypes, and values that are not finite."""
    missing = [k for k in expected if k not in saved]
    if missing:
        return f"it lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    extra = [k for k in saved if k not in expected]
    if extra:
        return f"it has {extra[0]}, which this network does not" + \
            (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    for name, want in expected.items():
        got = saved[name]
        if got.shape != want.shape:
            return f"{name} has shape {tuple(got.shape)}, the network needs {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"{name} is {got.dtype}, the network needs {want.dtype}"
        if got.is_floating_point() and not torch.isfinite(got).all():
            return f"{name} holds NaN or infinite values"
    return None


def optimizer_fit_problem(saved: dict, parameters) -> str:
    """How a checked optimizer state fails to fit these parameters (None if it fits)."""
    shapes = [p.shape for p in parameters]
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    if len(ids) != len(shapes) or sorted(ids) != sorted(set(ids)):
        return f"its optimizer state covers {len(ids)} parameters, the network has {len(shapes)}"
    position = {index: n for n, index in enumerate(ids)}
    for index, state in saved["state"].items():
        if index not in position:
            return f"its optimizer state names parameter {_shown(index)}, which no group holds"
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and \
                    value.shape != shapes[position[index]]:
                return (f"its optimizer {key} of parameter {position[index]} has shape "
                        f"{tuple(value.shape)}, not {tuple(shapes[position[index]])}")
            if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                    not torch.isfinite(value).all():
                return f"its optimizer {key} of parameter {position[index]} is not finite"
    return None


# --------------------------------------------------------------------------------------------
# Random states as plain types (weights_only loading admits no numpy objects)

def capture_rng_states() -> dict:
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def rng_problem(states):
    """What is wrong with saved random states (None if they can be restored)."""
    if not isinstance(states, dict) or not all(k in states for k in _RNG_KEYS) or \
            not isinstance(states["python"], dict) or not isinstance(states["numpy"], dict):
        return "'rng' must hold the python, numpy and torch generator states"
    p, n, t = states["python"], states["numpy"], states["torch"]
    if not (_is_int(p.get("version")) and isinstance(p.get("state"), list)
            and len(p["state"]) == 625 and all(_is_int(v) and 0 <= v < 2 ** 32 for v in p["state"][:624])
            and _is_int(p["state"][624]) and (p.get("gauss") is None or is_number(p.get("gauss")))):
        return "the saved Python random state is malformed"
    keys = n.get("keys")
    if not (n.get("name") == "MT19937" and isinstance(keys, torch.Tensor) and keys.shape == (624,)
            and not keys.is_floating_point() and _is_int(n.get("pos")) and 0 <= n["pos"] <= 624
            and _is_int(n.get("has_gauss")) and is_number(n.get("gauss"))):
        return "the saved numpy random state is malformed"
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8
            and t.shape == torch.get_rng_state().shape):
        return "the saved torch random state is malformed"
    cuda = states.get("cuda")
    if cuda is not None and not (isinstance(cuda, list)
                                 and all(isinstance(s, torch.Tensor) for s in cuda)):
        return "the saved CUDA random states are malformed"
    return None


def restore_rng_states(states: dict) -> None:
    """Put back the global generators of capture_rng_states (states checked by rng_problem)."""
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and \
            len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
