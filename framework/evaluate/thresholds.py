"""Decision thresholds (--decision_threshold) of binary and multi-label runs.

A binary model predicts its second class where that class's probability reaches the threshold; a multi-label
model predicts each label whose probability reaches that label's threshold. `auto` picks, per label, the
threshold of the best F1 on the evaluation split: the probabilities sorted from the highest, F1 at every cut
between two distinct values, the threshold halfway between the two values of the best cut (so a slightly
different probability at predict time falls on the same side). A label without positive evaluation samples
keeps 0.5. The thresholds are saved as thresholds.json beside the weights and used by --do_predict and
--model_path runs; the report names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from framework.core.errors import FlagError
from framework.evaluate.predictions import DEFAULT_THRESHOLD
from framework.io.names import THRESHOLDS_FILE


def best_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold of the highest F1 for one label: `scores` its probabilities, `truth` where it is present."""
    positives = int(truth.sum())
    if positives == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], truth[order].astype(np.int64)
    true_positives = np.cumsum(hits)
    # A cut may only fall where the next probability is lower (ties are predicted together).
    ends = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True))
    predicted = ends + 1
    f1 = 2 * true_positives[ends] / (predicted + positives)
    best = int(np.argmax(f1))  # the first (highest threshold) of equal F1s: fewer predicted labels
    cut = ends[best]
    below = ranked[cut + 1] if cut + 1 < len(ranked) else 0.0
    return float((ranked[cut] + below) / 2)


def fit_thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per label, the threshold of the best F1: multi-label (`labels` samples x labels indicators) or binary
    (`labels` class ids; one threshold, on the second class's probability)."""
    if labels.ndim == 2:
        return np.array([best_f1_threshold(probabilities[:, j], labels[:, j] == 1)
                         for j in range(labels.shape[1])], np.float32)
    return np.array([best_f1_threshold(probabilities[:, 1], labels == 1)], np.float32)


def check_threshold_task(config: Any, num_classes: int) -> None:
    """--decision_threshold is for binary and multi-label tasks; refuse it for a single-label task of more
    classes."""
    if config.decision_threshold and not config.multi_label and num_classes != 2:
        raise FlagError("decision_threshold", f"applies to binary (two-class) and multi-label tasks; this one has "
                        f"{num_classes} classes (its prediction is the most probable class)")


def fixed_thresholds(config: Any, num_classes: int) -> Optional[np.ndarray]:
    """The thresholds a fixed --decision_threshold sets (one per label; one for a binary task), or None."""
    value = config.fixed_threshold
    if value is None:
        return None
    return np.full(num_classes if config.multi_label else 1, value, np.float32)


def save_thresholds(folder: Path, thresholds: np.ndarray, class_names: Sequence[str], multi_label: bool,
                    f1_before: float, f1_after: float) -> None:
    """thresholds.json beside the weights: each label's threshold (binary: the second class's), and the F1 they
    gave on the evaluation split against 0.5."""
    from framework.io.files import write_atomic

    names = list(class_names) if multi_label else [class_names[1]]
    record = {"thresholds": {name: float(t) for name, t in zip(names, thresholds)},
              "fitted_on": "the evaluation split, best F1 per label",
              "f1_at_0.5": f1_before, "f1_at_thresholds": f1_after}
    write_atomic(folder / THRESHOLDS_FILE, json.dumps(record, indent=2) + "\n")


def load_thresholds(folder: Path, class_names: Sequence[str], multi_label: bool,
                    flag: str = "model_path") -> Optional[np.ndarray]:
    """The thresholds a run saved (thresholds.json), in the order of `class_names`, or None; every label needs a
    number in (0, 1) and no other name may appear (otherwise one line naming the file and the value)."""
    from framework.io.files import read_json_file

    path = folder / THRESHOLDS_FILE
    if not path.is_file():
        return None
    if not multi_label and len(class_names) != 2:
        raise FlagError(flag, f": {str(path)!r} holds decision thresholds, but the model has {len(class_names)} "
                        f"classes and one label each (thresholds decide binary and multi-label tasks); remove the "
                        f"file")
    names = list(class_names) if multi_label else [class_names[1]]
    what = f'an object with "thresholds": {{label: a number in (0, 1)}} for {", ".join(map(repr, names[:5]))}' \
        + (", ..." if len(names) > 5 else "")
    record = read_json_file(path, flag, what)
    saved = record.get("thresholds") if isinstance(record, dict) else None
    if not isinstance(saved, dict):
        raise FlagError(flag, f": {str(path)!r} does not hold {what}")
    unknown = sorted(set(saved) - set(names))
    if unknown:
        raise FlagError(flag, f": {str(path)!r} has a threshold for {unknown[0]!r}, which is not "
                        f"{'a label' if multi_label else 'the positive class'} of the model "
                        f"({', '.join(map(repr, names[:5]))}{', ...' if len(names) > 5 else ''})")
    for name in names:
        value = saved.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            shown = "no threshold" if name not in saved else f"threshold {value!r}"
            raise FlagError(flag, f": {str(path)!r} has {shown} for {name!r}; a threshold is a number in (0, 1)")
    return np.array([float(saved[name]) for name in names], np.float32)


def tune_thresholds(context: Any, temperature: float = 1.0) -> tuple[np.ndarray, Any]:
    """--decision_threshold auto: the evaluation split's probabilities (gathered: the same on every process; the
    context is framework.evaluate.evaluation.EvaluationContext), the thresholds of best F1, the report at those
    thresholds (it names them); thresholds.json into the run directory. Returns (thresholds, report)."""
    from sklearn.metrics import f1_score

    from framework.evaluate.evaluation import build_report, decide

    class_names, multi_label = context.class_names, context.multi_label
    predictions = context.predict(temperature=temperature)
    thresholds = fit_thresholds(predictions.probabilities.full, predictions.labels)
    decided = decide(predictions, thresholds)
    average = "micro" if multi_label else "binary"
    before = float(f1_score(predictions.labels, predictions.predictions, average=average, zero_division=0))
    after = float(f1_score(decided.labels, decided.predictions, average=average, zero_division=0))
    report = build_report(decided, class_names, context.extra_metrics, context.errors)
    kind = "micro F1" if multi_label else f"F1 of {class_names[1]}"
    report.text += f"{'':>26} (tuned on this split: {kind} {before:.4f} at 0.5 -> {after:.4f})\n"
    if context.accelerator.is_main_process:
        save_thresholds(context.folder, thresholds, class_names, multi_label, before, after)
    return thresholds, report


def calibrate_and_tune(context: Any, report: Any, *, calibrate: bool, tune: bool,
                       temperature: Optional[float] = None, thresholds: Optional[np.ndarray] = None
                       ) -> tuple[Optional[float], Optional[np.ndarray], Any]:
    """What follows the last evaluation, in its one order: --calibrate's temperature, then --decision_threshold
    auto's thresholds at that temperature. Returns the temperature, the thresholds and the report in effect."""
    from framework.evaluate.temperature import calibrate as fit_and_apply_temperature

    if calibrate:
        temperature, report = fit_and_apply_temperature(context, report)
    if tune:
        thresholds, report = tune_thresholds(context, temperature or 1.0)
    return temperature, thresholds, report
