"""Measures a text guard backend on the shared safety and image-prompt sets: AUPRC, AUROC, F1, recall, FPR,
what a policy does, its false positives, latency, PR curve."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from guardforge.guard.t2i_data import I2P_REPORT_NAMES, T2I_DATASETS, load_t2i
from guardforge.guard.datasets import CATEGORIES, Example, load_dataset, load_openai_moderation

SAFETY_DATASETS = ("openai-mod", "xstest", "ailuminate")
DATASETS = SAFETY_DATASETS + T2I_DATASETS
# Sets read whole: XSTest is test-only, AILuminate's demo set is all training data (its recall says the model
# learnt it). The others have the README's sha1 train/test split.
UNSPLIT = ("xstest", "ailuminate")
BATCH_SIZE = 32

# How a generation reads a prompt, for the guard: every text it scores for that prompt (the most severe
# decision over them stands). The default reads the prompt as written, one text.
PromptReader = Callable[[str], Sequence[str]]


@dataclass
class FalsePositive:
    """A safe row the policy did not allow: what it did, why, and the overall score it read."""

    text: str
    action: str
    categories: list[str]
    score: float


@dataclass
class EvalReport:
    dataset: str
    backend: str
    rows: int
    unsafe_rows: int
    threshold: float
    auprc: float | None  # None where a set has one class only (AILuminate: all unsafe; Parti, COCO: all safe)
    f1: float | None
    precision: float | None
    recall: float | None  # None where there are no unsafe rows
    false_positive_rate: float | None
    category_recall: dict[str, tuple[float, int]] = field(default_factory=dict)  # code -> (recall, positives)
    auroc: float | None = None
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
    policy_blocked: tuple[float | None, float | None] | None = None
    policy_not_allowed: tuple[float | None, float | None] | None = None
    policy_flagged: tuple[float | None, float | None] | None = None  # flagged, not blocked
    category_policy_recall: dict[str, float] = field(default_factory=dict)  # code -> blocked-or-flagged recall
    category_names: dict[str, str] = field(default_factory=dict)  # how the report names a code (I2P's groups)
    # Every safe row the policy blocked or flagged; listed in full for sets with no unsafe rows.
    false_positives: list[FalsePositive] = field(default_factory=list)
    false_positives_path: Path | None = None
    # Throughput of the batched pass over the whole set (wall clock, this machine as it was).
    scored_texts: int = 0
    scoring_s: float = 0.0

    def lines(self) -> list[str]:
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        def name(code: str) -> str:
            return self.category_names.get(code, code)

        out = [f"{self.dataset}: {self.rows} prompts ({self.unsafe_rows} unsafe), backend {self.backend}, "
               f"threshold {self.threshold:.3f}",
               f"  AUPRC {fmt(self.auprc)}  AUROC {fmt(self.auroc)}  F1 {fmt(self.f1)}  "
               f"precision {fmt(self.precision)}  recall {fmt(self.recall)}  FPR {fmt(self.false_positive_rate)}",
               f"  latency per prompt (batch of 1): p50 {self.latency_ms_p50:.1f} ms, "
               f"p95 {self.latency_ms_p95:.1f} ms; process CPU time p50 {self.cpu_ms_p50:.1f} ms"]
        if self.scoring_s > 0:
            out.append(f"  throughput: {self.scored_texts} texts in {self.scoring_s:.1f} s "
                       f"({self.scored_texts / self.scoring_s:.0f} per second, batches of {BATCH_SIZE})")
        safe_rows = self.rows - self.unsafe_rows
        if self.policy_blocked is not None and self.unsafe_rows:
            (br, bf), (fr, ff), (nr, nf) = self.policy_blocked, self.policy_flagged, self.policy_not_allowed
            out.append(f"  policy {self.policy} at the prompt checkpoint: blocked recall {br:.3f} FPR {fmt(bf)}; "
                       f"flagged recall {fr:.3f} FPR {fmt(ff)}; blocked or flagged recall {nr:.3f} FPR {fmt(nf)}")
        elif self.policy_blocked is not None:
            blocked, flagged, either = (round(rates[1] * safe_rows) for rates in
                                        (self.policy_blocked, self.policy_flagged, self.policy_not_allowed))
            out.append(f"  policy {self.policy} at the prompt checkpoint, false-positive rate: blocked "
                       f"{self.policy_blocked[1]:.4f} ({blocked} of {safe_rows}), flagged "
                       f"{self.policy_flagged[1]:.4f} ({flagged}), blocked or flagged "
                       f"{self.policy_not_allowed[1]:.4f} ({either})")
        if self.category_recall:
            out.append("  recall per category (at the threshold, on the overall score): " + ", ".join(
                f"{name(code)} {r:.2f} (n={n})" for code, (r, n) in self.category_recall.items()))
        if self.category_policy_recall:
            out.append(f"  recall per category (policy {self.policy}, blocked or flagged): " + ", ".join(
                f"{name(code)} {r:.2f}" for code, r in self.category_policy_recall.items()))
        written = f", also in {self.false_positives_path}" if self.false_positives_path else ""
        if self.policy_blocked is not None and not self.unsafe_rows:  # a set of safe rows: list them all
            out.append(f"  false positives ({len(self.false_positives)}{written}): action, overall score, "
                       f"categories, text")
            out.extend(f"    {fp.action:5} {fp.score:.3f} {','.join(fp.categories) or '-':8} {fp.text!r}"
                       for fp in self.false_positives)
        elif written:
            out.append(f"  false positives ({len(self.false_positives)}): {self.false_positives_path}")
        if self.curve_path:
            out.append(f"  precision-recall curve: {self.curve_path}")
        return out


def _timed_scores(backend, texts: list[str], latency_sample: int) -> tuple[list, list[float], list[float], float]:
    """Every text's answer (batched), per-prompt latency measured one prompt at a time, and the seconds the
    batched pass took."""
    scores = []
    t0 = time.perf_counter()
    for start in range(0, len(texts), BATCH_SIZE):
        scores.extend(backend.score_texts(texts[start:start + BATCH_SIZE]))
    scoring_s = time.perf_counter() - t0
    # Latency is what a single request pays: batch of one, on a sample spread over the set.
    step = max(1, len(texts) // latency_sample)
    latencies, cpu = [], []
    for text in texts[::step][:latency_sample]:
        t0, c0 = time.perf_counter(), time.process_time()
        backend.score_texts([text])
        latencies.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return scores, latencies, cpu, scoring_s


def _rates(hit: np.ndarray, labels: np.ndarray) -> tuple[float | None, float | None]:
    """(recall, false-positive rate) of `hit` as a prediction of unsafe; None where a class is absent."""
    pos, neg = labels == 1, labels == 0
    return (float(hit[pos].mean()) if pos.any() else None), (float(hit[neg].mean()) if neg.any() else None)


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


def _label_keys(examples: list[Example]) -> list[str]:
    """The groups to report recall for: the S-codes in order, then any other label a set carries (I2P's
    harassment and shocking), in the order first seen."""
    extra = dict.fromkeys(k for e in examples for k in e.labels if k not in CATEGORIES and k != "unsafe")
    return [*CATEGORIES, *extra]


def write_false_positives(false_positives: list[FalsePositive], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["action", "score", "categories", "text"])
        writer.writerows([fp.action, f"{fp.score:.4f}", ",".join(fp.categories), fp.text] for fp in false_positives)
    return path


def evaluate_examples(backend, examples: list[Example], dataset: str, threshold: float,
                      out_dir: Path | None = None, latency_sample: int = 100,
                      log: Callable[[str], None] | None = None, policy=None,
                      read_prompt: PromptReader | None = None,
                      category_names: dict[str, str] | None = None) -> EvalReport:
    """`read_prompt`: how a generation reads a prompt (the texts the guard scores for it); a row's overall score
    is the highest over those texts and the policy's decision the most severe, as at the prompt checkpoint."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from guardforge.guard.verdict import SEVERITY

    texts = [e.text for e in examples]
    views = [list(dict.fromkeys(read_prompt(t))) if read_prompt else [t] for t in texts]
    flat = [view for row in views for view in row]
    labels = np.asarray([e.unsafe for e in examples])
    answers, latencies, cpu, scoring_s = _timed_scores(backend, flat, latency_sample)
    per_row, start = [], 0
    for row in views:
        per_row.append(answers[start:start + len(row)])
        start += len(row)
    scores = np.asarray([max(answer.unsafe for answer in row) for row in per_row], dtype=np.float64)
    predicted = scores >= threshold
    pos, neg = labels == 1, labels == 0
    tp, fp = int((predicted & pos).sum()), int((predicted & neg).sum())
    has_safe, has_unsafe = bool(neg.any()), bool(pos.any())
    both = has_safe and has_unsafe
    recall = tp / int(pos.sum()) if has_unsafe else None
    precision = tp / max(1, tp + fp) if both else None
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else 0.0) if both else None
    groups = {}
    for code in _label_keys(examples):
        sel = np.asarray([e.labels.get(code) == 1 for e in examples])
        if sel.any():
            groups[code] = sel
    category_recall = {code: (float(predicted[sel].mean()), int(sel.sum())) for code, sel in groups.items()}
    stem = dataset.replace(" ", "-")
    curve = None
    if out_dir is not None and both:
        curve = plot_pr_curve(labels, scores, threshold, f"{dataset} ({getattr(backend, 'name', '?')})",
                              Path(out_dir) / f"{stem}.png")
    policy_figures = {}
    if policy is not None:
        from guardforge.guard.policy import judge

        decisions = []  # (action, violated, score) of the most severe reading of each row
        for row in per_row:
            judged = [judge(policy, answer, "prompt") for answer in row]
            _, _, violated, action = max(judged, key=lambda j: SEVERITY[j[3]])  # the first of the most severe
            decisions.append((action, violated, max(j[1] or 0.0 for j in judged)))
        actions = np.asarray([action for action, _, _ in decisions])
        false_positives = [FalsePositive(text, action, list(violated), float(score))
                           for text, label, (action, violated, score) in zip(texts, labels, decisions, strict=True)
                           if label == 0 and action != "allow"]
        policy_figures = {"policy": policy.name, "policy_blocked": _rates(actions == "block", labels),
                          "policy_flagged": _rates(actions == "flag", labels),
                          "policy_not_allowed": _rates(actions != "allow", labels),
                          "category_policy_recall": {code: float((actions[sel] != "allow").mean())
                                                     for code, sel in groups.items()},
                          "false_positives": false_positives}
        if out_dir is not None and has_safe:
            policy_figures["false_positives_path"] = write_false_positives(
                false_positives, Path(out_dir) / f"{stem}-false-positives.tsv")
    return EvalReport(
        **policy_figures,
        dataset=dataset, backend=getattr(backend, "name", type(backend).__name__), rows=len(examples),
        unsafe_rows=int(pos.sum()), threshold=threshold,
        auprc=float(average_precision_score(labels, scores)) if both else None,
        auroc=float(roc_auc_score(labels, scores)) if both else None,
        f1=f1, precision=precision, recall=recall,
        false_positive_rate=fp / int(neg.sum()) if has_safe else None,
        category_recall=category_recall, category_names=dict(category_names or {}),
        latency_ms_p50=float(np.percentile(latencies, 50)), latency_ms_p95=float(np.percentile(latencies, 95)),
        cpu_ms_p50=float(np.percentile(cpu, 50)), curve_path=curve,
        scored_texts=len(flat), scoring_s=scoring_s,
    )


def load_eval_set(dataset: str, split: str = "test") -> list[Example]:
    """A set's rows by its CLI name: the test (or train) split where the set has one, else the whole set."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if dataset in T2I_DATASETS:
        return load_t2i(dataset, split)
    if dataset in UNSPLIT:
        if split != "test":
            raise ValueError(f"{dataset} has no train split: it is read whole")
        return load_dataset(dataset)
    return load_openai_moderation(split)


def spread(examples: list[Example], limit: int | None) -> list[Example]:
    """At most `limit` rows, evenly spaced over the set (files are often grouped by category), in order."""
    if limit is None or limit >= len(examples):
        return examples
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    return [examples[i] for i in np.linspace(0, len(examples) - 1, limit).round().astype(int)]


def evaluate_text_backend(backend, dataset: str, out_dir: Path | None = None, threshold: float | None = None,
                          latency_sample: int = 100, policy=None, split: str = "test", limit: int | None = None,
                          read_prompt: PromptReader | None = None) -> EvalReport:
    """Evaluate on one data set's test (or train) rows at `threshold` (default: the backend's shipped threshold)
    and, with `policy`, what that policy does with the same answers. `limit` scores that many rows spread over
    the split; `read_prompt` is how a generation reads a prompt (default: as written)."""
    examples = spread(load_eval_set(dataset, split), limit)
    if threshold is None:
        threshold = float(getattr(backend, "threshold", 0.5))
    name = dataset if split == "test" or dataset in UNSPLIT else f"{dataset}-{split}"
    return evaluate_examples(backend, examples, name, threshold, out_dir, latency_sample, policy=policy,
                             read_prompt=read_prompt, category_names=I2P_REPORT_NAMES if dataset == "i2p" else None)


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
