"""A classic scikit-learn baseline on the same split, so a user sees at once whether the network earns its cost.

Recipes provide the features (TF-IDF of the texts, downscaled pixels of the images);
this module fits logistic regression on the training split and scores the
evaluation split. It runs on the main process only.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

AUTO_LIMIT = 200_000  # --baseline auto: on below this many training samples


def wanted(spec: str, train_size: int, limit: int = AUTO_LIMIT) -> bool:
    """`--baseline`: true, false, or auto (on below `limit` training samples)."""
    return spec == "true" or (spec == "auto" and train_size < limit)


def score(model: Any, train_x: Any, train_y: Sequence[int], eval_x: Any, eval_y: Sequence[int]) -> dict[str, float]:
    """Fit `model` on the training split; accuracy and macro F1 on the evaluation split (multi-label, labels as
    indicator rows: subset accuracy, macro and micro F1).

    Data the baseline cannot use (e.g. texts of one-letter words only, which the TF-IDF tokenizer
    drops) gives `{"baseline": "not fitted (reason)"}` instead: the baseline is a comparison, never
    a reason to stop the run.
    """
    try:
        model.fit(train_x, np.asarray(train_y))
    except ValueError as err:
        return {"baseline": f"not fitted ({str(err).splitlines()[0]})"}
    predicted = model.predict(eval_x)
    found = {"baseline_accuracy": float(accuracy_score(eval_y, predicted)),
             "baseline_macro_f1": float(f1_score(eval_y, predicted, average="macro", zero_division=0))}
    if np.asarray(eval_y).ndim == 2:
        found["baseline_micro_f1"] = float(f1_score(eval_y, predicted, average="micro", zero_division=0))
    return found


def logistic_regression(multi_label: bool = False) -> Any:
    """Logistic regression; multi-label, one per label (one-vs-rest, each label its own binary decision)."""
    from sklearn.linear_model import LogisticRegression  # imported when a baseline is fitted (0.5 s at start-up)
    from sklearn.multiclass import OneVsRestClassifier

    model = LogisticRegression(max_iter=2000)
    return OneVsRestClassifier(model) if multi_label else model


def tfidf_logistic_regression(multi_label: bool = False):
    """Word 1-2-gram TF-IDF (sublinear term frequency) + logistic regression (multi-label: one-vs-rest): the text
    baseline."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), logistic_regression(multi_label))


def pixel_logistic_regression(multi_label: bool = False):
    """Standardized pixels + logistic regression (multi-label: one-vs-rest): the image baseline."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), logistic_regression(multi_label))
