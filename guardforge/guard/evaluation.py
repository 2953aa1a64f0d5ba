"""Measures a text guard backend on the shared safety test sets: AUPRC, F1, recall, FPR, latency, PR curve."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guardforge.guard.training.data import CATEGORIES, Example, load_dataset

DATASETS = ("openai-mod", "xstest", "ailuminate")


@dataclass
class EvalReport:
    dataset: str
    backend: str
    rows: int
    unsafe_rows: int
    threshold: float
    auprc: float | None  # None where there are no safe rows (AILuminate)
    f1: float | None
    precision: float | None
    recall: float
    false_positive_rate: float | None
    category_recall: dict[str, tuple[float, int]] = field(default_factory=dict)  # code -> (recall, positives)
    latency_ms_p50: float = 0.0
    latency_ms_p95: float = 0.0
    # CPU time of this process per prompt: on a shared, oversubscribed machine the wall-clock figures above
    # mostly measure waiting for a core; this one is closer to what an idle machine would show.
    cpu_ms_p50: float = 0.0
    curve_path: Path | None = None
    # What the product does with these scores: the policy's action at the prompt checkpoint (Policy.decide
    # over the category scores, then the overall rule), as (recall, false-positive rate) of "blocked" and of
    # "not allowed" (blocked or flagged). None when no policy was given.
    policy: str | None = None
    policy_blocked: tuple[float, float | None] | None = None
    policy_not_allowed: tuple[float, float | None] | None = None

    def lines(self) -> list[str]:
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        out = [f"{self.dataset}: {self.rows} prompts ({self.unsafe_rows} unsafe), backend {self.backend}, "
               f"threshold {self.threshold:.3f}",
               f"  AUPRC {fmt(self.auprc)}  F1 {fmt(self.f1)}  precision {fmt(self.precision)}  "
               f"recall {fmt(self.recall)}  FPR {fmt(self.false_positive_rate)}",
               f"  latency per prompt (batch of 1): p50 {self.latency_ms_p50:.1f} ms, "
               f"p95 {self.latency_ms_p95:.1f} ms; process CPU time p50 {self.cpu_ms_p50:.1f} ms"]
        if self.policy_blocked is not None:
            (br, bf), (nr, nf) = self.policy_blocked, self.policy_not_allowed
            out.append(f"  policy {self.policy} at the prompt checkpoint: blocked recall {br:.3f} FPR {fmt(bf)}; "
                       f"blocked or flagged recall {nr:.3f} FPR {fmt(nf)}")
        if self.category_recall:
            out.append("  recall per category (at the threshold, on the overall score): " + ", ".join(
                f"{code} {r:.2f} (n={n})" for code, (r, n) in self.category_recall.items()))
        if self.curve_path:
            out.append(f"  precision-recall curve: {self.curve_path}")
        return out


def _timed_scores(backend, texts: list[str], latency_sample: int) -> tuple[list, list[float], list[float]]:
    """Every text's answer (batched), and per-prompt latency measured one prompt at a time."""
    scores = []
    for start in range(0, len(texts), 32):
        scores.extend(backend.score_texts(texts[start:start + 32]))
    # Latency is what a single request pays: batch of one, on a sample spread over the set.
    step = max(1, len(texts) // latency_sample)
    latencies, cpu = [], []
    for text in texts[::step][:latency_sample]:
        t0, c0 = time.perf_counter(), time.process_time()
        backend.score_texts([text])
        latencies.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return scores, latencies, cpu


def _rates(hit: np.ndarray, labels: np.ndarray) -> tuple[float, float | None]:
    """(recall, false-positive rate) of `hit` as a prediction of unsafe."""
    pos, neg = labels == 1, labels == 0
    return float(hit[pos].mean()), float(hit[neg].mean()) if neg.any() else None


def plot_pr_curve(labels: np.ndarray, scores: np.ndarray, threshold: float, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    precision, recall, _ = precision_recall_curve(labels, scores)
    predicted = scores >= threshold
    tp = int((predicted & (labels == 1)).sum())
    p_at = tp / max(1, int(predicted.sum()))
    r_at = tp / max(1, int((labels == 1).sum()))
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(recall, precision, label=f"AUPRC {average_precision_score(labels, scores):.3f}")
    ax.scatter([r_at], [p_at], color="red", zorder=3, label=f"shipped threshold {threshold:.2f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_examples(backend, examples: list[Example], dataset: str, threshold: float,
                      out_dir: Path | None = None, latency_sample: int = 100,
                      log: Callable[[str], None] | None = None, policy=None) -> EvalReport:
    from sklearn.metrics import average_precision_score

    texts = [e.text for e in examples]
    labels = np.asarray([e.unsafe for e in examples])
    answers, latencies, cpu = _timed_scores(backend, texts, latency_sample)
    scores = np.asarray([answer.unsafe for answer in answers], dtype=np.float64)
    predicted = scores >= threshold
    pos, neg = labels == 1, labels == 0
    tp, fp = int((predicted & pos).sum()), int((predicted & neg).sum())
    recall = tp / max(1, int(pos.sum()))
    has_safe = bool(neg.any())
    precision = tp / max(1, tp + fp) if has_safe else None
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else 0.0) if has_safe else None
    category_recall = {}
    for code in CATEGORIES:
        sel = np.asarray([e.labels.get(code) == 1 for e in examples])
        if sel.any():
            category_recall[code] = (float(predicted[sel].mean()), int(sel.sum()))
    curve = None
    if out_dir is not None and has_safe:
        curve = plot_pr_curve(labels, scores, threshold, f"{dataset} ({getattr(backend, 'name', '?')})",
                              Path(out_dir) / f"{dataset}.png")
    policy_figures = {}
    if policy is not None:
        from guardforge.guard.policy import judge

        actions = np.asarray([judge(policy, answer, "prompt")[3] for answer in answers])
        policy_figures = {"policy": policy.name, "policy_blocked": _rates(actions == "block", labels),
                          "policy_not_allowed": _rates(actions != "allow", labels)}
    return EvalReport(
        **policy_figures,
        dataset=dataset, backend=getattr(backend, "name", type(backend).__name__), rows=len(examples),
        unsafe_rows=int(pos.sum()), threshold=threshold,
        auprc=float(average_precision_score(labels, scores)) if has_safe else None,
        f1=f1, precision=precision, recall=recall,
        false_positive_rate=fp / int(neg.sum()) if has_safe else None,
        category_recall=category_recall,
        latency_ms_p50=float(np.percentile(latencies, 50)), latency_ms_p95=float(np.percentile(latencies, 95)),
        cpu_ms_p50=float(np.percentile(cpu, 50)), curve_path=curve,
    )


def evaluate_text_backend(backend, dataset: str, out_dir: Path | None = None, threshold: float | None = None,
                          latency_sample: int = 100, policy=None) -> EvalReport:
    """Evaluate on one data set's test rows at `threshold` (default: the backend's shipped threshold) and, with
    `policy`, what that policy does with the same answers."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if threshold is None:
        threshold = float(getattr(backend, "threshold", 0.5))
    return evaluate_examples(backend, load_dataset(dataset), dataset, threshold, out_dir, latency_sample,
                             policy=policy)


def image_latency(backend, size: int = 512, count: int = 16, batch_size: int = 8,
                  seed: int = 0) -> dict[str, float]:
    """Milliseconds per image at `size` x `size` on random-noise images: one at a time and in batches."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]
    backend.score_images(images[:1])  # first call builds the session's kernels; not what a user waits for
    single = []
    for image in images:
        t0 = time.perf_counter()
        backend.score_images([image])
        single.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for start in range(0, count, batch_size):
        backend.score_images(images[start:start + batch_size])
    batched = (time.perf_counter() - t0) * 1000 / count
    return {"single_p50_ms": float(np.percentile(single, 50)), "single_p95_ms": float(np.percentile(single, 95)),
            "batched_ms_per_image": float(batched)}
