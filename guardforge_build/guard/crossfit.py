"""A domain expert for the text guard and the cross-fitted stack that decides when to trust it.

Why: the OpenAI moderation rows (comments and chat: abuse, sexual and violent content) are a different kind
of text from AILuminate's harmful requests and our image prompts and safe questions. A linear model over
the frozen MiniLM features trained on the OpenAI rows alone ranks them better (5-fold out-of-fold AUPRC on
the OpenAI train split 0.80) than the same model trained on everything (0.70), where the requests and image
prompts, easy to tell apart, set the boundary. But alone it knows nothing of requests. So the weights carry
two more linear maps over the pooled features: an *expert* (unsafe or not, fitted on the domain's rows
only) and a *gate* (is this text of that domain), and the stack sees the expert's logit weighted by the
gate and the other signals weighted by its complement (embedded_text.domain_columns).

The stack's weights are fitted on out-of-fold signals over the whole training split (cross-fitting: each
signal refitted on four fifths, scored on the fifth), not on the validation slice, whose ~180 OpenAI rows
are too few for eight inputs; domain rows weigh more in that fit because they are where the signals
disagree. The threshold comes from the same out-of-fold scores; the validation slice gives the per-category
temperatures and the metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from guardforge.guard.backends.embedded_text import (
    domain_logits,
    linear_logits,
    quantized_linear,
    stack_columns,
    unit_rows,
)
from guardforge.guard.datasets import Example
from guardforge_build.guard.data import OUTPUTS


def fit_domain(features: np.ndarray, examples: list[Example], source: str, gate_c: float,
               expert_c: float, width: int) -> dict[str, np.ndarray]:
    """The gate (rows of `source` against the rest) and the expert (unsafe against safe on `source` rows)."""
    from sklearn.linear_model import LogisticRegression

    unit = unit_rows(features, width)
    in_domain = np.asarray([e.source == source for e in examples])
    if in_domain.all() or not in_domain.any():
        raise ValueError(f"the domain expert needs rows of {source!r} and rows of other sources")
    unsafe = np.asarray([e.unsafe for e in examples])
    if len(set(unsafe[in_domain])) < 2:
        raise ValueError(f"the domain expert needs safe and unsafe rows of {source!r}")
    gate = LogisticRegression(C=gate_c, max_iter=3000).fit(unit, in_domain)
    expert = LogisticRegression(C=expert_c, max_iter=3000, class_weight="balanced").fit(
        unit[in_domain], unsafe[in_domain])
    return {"gate.coef": gate.coef_[0].astype(np.float64), "gate.intercept": gate.intercept_.astype(np.float64),
            "expert.coef": expert.coef_[0].astype(np.float64),
            "expert.intercept": expert.intercept_.astype(np.float64)}


def stack_inputs(head_unsafe: np.ndarray, texts: list[str], tfidf, profanity, domain: dict[str, np.ndarray],
                 features: np.ndarray, width: int) -> np.ndarray:
    """The stack's columns from the trainer's fitted objects, in the backend's order (stack_columns)."""
    vectorizer, classifier = tfidf
    return stack_columns(head_unsafe, classifier.decision_function(vectorizer.transform(texts)),
                         linear_logits(*profanity, texts) if profanity is not None else None,
                         domain_logits(features, domain, width))


def cross_fitted_stack(features: np.ndarray, train: list[Example], config, profanity,
                       fit_head: Callable[[np.ndarray, list[Example]], torch.nn.Module],
                       fit_tfidf: Callable[[list[Example]], tuple], log: Callable[[str], None],
                       width: int) -> tuple[list[float], float]:
    """Stack weights (one per input, then the bias) and the overall threshold, from out-of-fold inputs over
    `train`. The weights are fitted with the domain's rows weighing more, then rescaled by a Platt fit on
    the unweighted rows, so the score reads as a probability on the training mix; the threshold maximises F1
    on those out-of-fold scores (2,800 rows rather than the validation slice's 493). `features`: the last
    layer's pooled output (what the head reads, `width` wide), then any earlier layers' (gate and expert)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    texts = [e.text for e in train]
    labels = np.asarray([e.unsafe for e in train])
    strata = [f"{e.source}/{e.unsafe}" for e in train]
    u = OUTPUTS.index("unsafe")
    inputs = None
    folds = StratifiedKFold(config.stack_folds, shuffle=True, random_state=config.seed).split(texts, strata)
    for k, (fit_rows, held_rows) in enumerate(folds):
        part = [train[i] for i in fit_rows]
        head = fit_head(features[fit_rows, :width], part)  # the head reads the last layer only
        if config.quantize:
            head = quantized_linear(head)  # the head runs int8 in the guard: score the held-out rows so too
        with torch.no_grad():
            head_unsafe = head(torch.as_tensor(features[held_rows, :width], dtype=torch.float32))[:, u].numpy()
        domain = fit_domain(features[fit_rows], part, config.domain_source, config.gate_c, config.expert_c, width)
        held = stack_inputs(head_unsafe, [texts[i] for i in held_rows], fit_tfidf(part), profanity, domain,
                            features[held_rows], width)
        if inputs is None:
            inputs = np.zeros((len(train), held.shape[1]))
        inputs[held_rows] = held
        log(f"cross-fitting fold {k + 1}/{config.stack_folds}")
    weights = np.where([e.source == config.domain_source for e in train], config.stack_domain_weight, 1.0)
    stack = LogisticRegression(C=config.stack_c, max_iter=5000).fit(inputs, labels, sample_weight=weights)
    z = stack.decision_function(inputs)
    platt = LogisticRegression(C=1e4, max_iter=1000).fit(z[:, None], labels)
    slope, shift = float(platt.coef_[0][0]), float(platt.intercept_[0])
    scores = 1 / (1 + np.exp(-(slope * z + shift)))
    threshold = best_f1_threshold(scores, labels)
    return [slope * float(w) for w in stack.coef_[0]] + [slope * float(stack.intercept_[0]) + shift], threshold


def best_f1_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))])
