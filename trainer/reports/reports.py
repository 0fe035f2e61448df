"""The test report: a table of checkpoints, then per-class accuracy and the confusion matrix of the
best of them, as text for the terminal and as a dict for ``--json``.

Every function here but file_digest and write_json is pure: it takes predictions and labels
(numpy arrays) and returns numbers or text, so the report can be checked against a case computed
by hand. Each checkpoint of a report carries the SHA-256 of the file tested (file_digest), which
ties the report to those very weights: a comparison takes a test accuracy only from a report of
the checkpoints its folder holds now (compare.py).
"""
import hashlib
import json
import math

import numpy as np

from trainer.run import checkpoints
from trainer.storage import atomic


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return counts


def per_class(confusion: np.ndarray):
    """[(images, accuracy or None when the class has no images)] for each class."""
    images = confusion.sum(axis=1)
    return [(int(n), float(confusion[k, k] / n) if n else None) for k, n in enumerate(images)]


DECADES = (1e-4, 1e-3, 1e-2, 1e-1)  # edges of the weight histogram, |w|


def weight_magnitudes(state_dict: dict) -> np.ndarray:
    """|w| of every learned value of a network's state dict, as one float64 vector; batch-norm
    running statistics and counters are left out."""
    return np.concatenate([v.detach().abs().flatten().double().cpu().numpy()
                           for k, v in state_dict.items()
                           if v.is_floating_point() and "running_" not in k])


def weight_summary(magnitudes: np.ndarray) -> dict:
    """|w| of every parameter -> the share below 1e-3 and 1e-2 and counts per decade of |w|
    (what L1 against L2 changes: L1 drives many weights to zero)."""
    magnitudes = np.asarray(magnitudes, dtype=np.float64).ravel()
    n = len(magnitudes)
    edges = (0.0,) + DECADES + (float("inf"),)
    counts = [int(((magnitudes >= lo) & (magnitudes < hi)).sum()) for lo, hi in zip(edges, edges[1:])]
    return {"parameters": n,
            "below_1e-3": float((magnitudes < 1e-3).mean()) if n else 0.0,
            "below_1e-2": float((magnitudes < 1e-2).mean()) if n else 0.0,
            "histogram": [{"from": lo, "to": hi if hi != float("inf") else None, "count": c}
                          for lo, hi, c in zip(edges, edges[1:], counts)]}


def format_weights(summary: dict, bar: int = 40) -> list:
    """The weight summary as lines: the two shares, then a bar per decade of |w|."""
    lines = [f"weights: {summary['parameters']:,} parameters, "
             f"{100 * summary['below_1e-3']:.1f}% with |w| < 1e-3, "
             f"{100 * summary['below_1e-2']:.1f}% with |w| < 1e-2"]
    top = max([b["count"] for b in summary["histogram"]] + [1])
    for b in summary["histogram"]:
        span = f"|w| >= {b['from']:g}" if b["to"] is None else f"{b['from']:g} <= |w| < {b['to']:g}"
        lines.append(f"  {span:<22} {'#' * round(bar * b['count'] / top):<{bar}} {b['count']:,}")
    return lines


def class_labels(names, num_classes: int) -> list:
    """The class names, or the class numbers as text when there are no names (or not as many)."""
    if names is not None and len(names) == num_classes:
        return list(names)
    return [str(k) for k in range(num_classes)]


def file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes, as hex (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build(results: list, labels: np.ndarray, names, num_classes: int, set_name: str,
          digests: dict = None) -> dict:
    """The whole report as plain types. ``results``: Model.evaluate_checkpoints' list;
    ``digests``: the file_digest of each checkpoint tested, by file name, for ``sha256``."""
    best = max(results, key=lambda r: r["accuracy"])  # the first of equals
    confusion = confusion_matrix(labels, best["predictions"], num_classes)
    classes = class_labels(names, num_classes)
    tested = [{k: r[k] for k in ("checkpoint", "epoch", "accuracy", "loss", "images")}
              for r in results]
    for entry in tested if digests else ():
        entry["sha256"] = digests.get(entry["checkpoint"])
    return {
        "set": set_name,
        "checkpoints": tested,
        "best": best["checkpoint"],
        "classes": classes,
        "per_class": [{"class": k, "name": classes[k], "images": n, "accuracy": acc}
                      for k, (n, acc) in enumerate(per_class(confusion))],
        "confusion_matrix": confusion.tolist(),
        "weights": best.get("weights"),
    }


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


MAX_PRINTED_MATRIX = 20  # classes; a larger matrix (CIFAR-100) goes to --json only


def format_text(report: dict) -> str:
    """The report for the terminal: aligned columns, one block after another."""
    rows = report["checkpoints"]
    width = max(len("checkpoint"), *(len(r["checkpoint"]) for r in rows))
    lines = [f"{'checkpoint':<{width}}  epoch  {report['set'] + ' acc':>9}  {'loss':>7}  images"]
    for r in rows:
        lines.append(f"{r['checkpoint']:<{width}}  {r['epoch']:>5}  {_percent(r['accuracy']):>9}  "
                     f"{r['loss']:>7.4f}  {r['images']:>6}")

    names = report["classes"]
    name_width = max(len(n) for n in names)
    lines += ["", f"per class, {report['best']}:"]
    for entry in report["per_class"]:
        lines.append(f"  {entry['name']:<{name_width}}  {_percent(entry['accuracy']):>7}  "
                     f"({entry['images']} images)")

    if report.get("weights"):
        lines += ["", f"{report['best']} " + format_weights(report["weights"])[0]]
        lines += format_weights(report["weights"])[1:]

    matrix = report["confusion_matrix"]
    if len(matrix) > MAX_PRINTED_MATRIX:
        lines += ["", f"confusion matrix of {report['best']}: {len(matrix)} x {len(matrix)}, "
                      f"written with --json PATH"]
        return "\n".join(lines)
    cell = max(len(str(len(matrix) - 1)), *(len(str(v)) for row in matrix for v in row))
    index_width = len(str(len(matrix) - 1))
    label_width = index_width + 1 + name_width
    lines += ["", f"confusion matrix of {report['best']} (rows: true class, columns: predicted)",
              " " * (label_width + 2) + " ".join(f"{k:>{cell}}" for k in range(len(matrix)))]
    for k, row in enumerate(matrix):
        label = f"{k:>{index_width}} {names[k]:<{name_width}}"
        lines.append(f"{label}  " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def _json_safe(value):
    """JSON has no NaN or infinity: such a number (a loss that overflowed) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(report: dict, path: str, flag: str = "--json") -> None:
    """Write the report to path atomically (CheckpointError naming ``flag``, the option that
    chose path, if it cannot be)."""
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"
    atomic.write_text(path, text, checkpoints.CheckpointError, flag=flag)
