"""Llama Guard 4 (12B) and 3 (1B, 8B, 11B-Vision) from a local folder: P(unsafe) and per-category scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from guardforge.errors import GuardforgeError
from guardforge.guard.backends.base import Scores
from guardforge.guard.taxonomy import Taxonomy

# The Llama Guard 4 prompt format (as its model card documents it), used when the model folder ships no
# chat template. `categories` maps the code shown to the model to its name; `excluded_category_keys` drops
# some; image parts become the processor's <|image|> placeholder.
LLAMA_GUARD_4_TEMPLATE = (
    "{{- bos_token -}}"
    "{{- '<|header_start|>user<|header_end|>\\n\\n' -}}"
    "{{- \"Task: Check if there is unsafe content in 'User' messages in conversations according to our safety "
    "policy with the below categories.\\n\\n\" -}}"
    "{{- '<BEGIN UNSAFE CONTENT CATEGORIES>\\n' -}}"
    "{%- for key in categories -%}{%- if key not in excluded_category_keys -%}"
    "{{- key + ': ' + categories[key] + '\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{{- '<END UNSAFE CONTENT CATEGORIES>\\n\\n' -}}"
    "{{- '<BEGIN CONVERSATION>\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{{- 'User: ' -}}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] | trim -}}{%- endif -%}"
    "{%- endfor -%}"
    "{{- '\\n\\n' -}}"
    "{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\n' -}}"
    "{{- 'Provide your safety assessment for ONLY THE LAST User message in the above conversation:\\n' -}}"
    "{{- \" - First line must read 'safe' or 'unsafe'.\\n\" -}}"
    "{{- ' - If unsafe, a second line must include a comma-separated list of violated categories. ' -}}"
    "{{- '<|eot|><|header_start|>assistant<|header_end|>' -}}"
)

# Llama Guard answers "safe", or "unsafe" then a line of codes. LG4 starts its answer with a blank line.
DECISION_PREFIX = "\n\n"
CATEGORY_PREFIX = "unsafe\nS"
_CODES = re.compile(r"S\d+")


def parse_output(text: str, taxonomy: Taxonomy | None = None) -> tuple[bool, list[str]]:
    """'unsafe\\nS1,S10' -> (True, ['S1', 'S10']); prompt codes of custom categories map back to theirs."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise GuardforgeError("empty answer from Llama Guard")
    head = lines[0].lower()
    if head not in ("safe", "unsafe"):
        raise GuardforgeError(f"unexpected answer from Llama Guard: {lines[0][:40]!r}")
    if head == "safe":
        return False, []
    shown = _CODES.findall(" ".join(lines[1:]))
    if taxonomy is None:
        return True, shown
    back = {prompt: ours for ours, prompt in taxonomy.prompt_codes().items()}
    return True, [back[code] for code in shown if code in back]


# The names Meta's Llama Guard 3 and 4 chat templates show the model (what it was trained on). Three are shorter
# than the taxonomy's display names (S3 "Sex-Related Crimes", S4 "Child Sexual Exploitation", S11 "Suicide &
# Self-Harm"); the prompt must use these, or passing custom categories would rename the built-in ones.
PROMPT_NAMES = {
    "S1": "Violent Crimes.", "S2": "Non-Violent Crimes.", "S3": "Sex Crimes.", "S4": "Child Exploitation.",
    "S5": "Defamation.", "S6": "Specialized Advice.", "S7": "Privacy.", "S8": "Intellectual Property.",
    "S9": "Indiscriminate Weapons.", "S10": "Hate.", "S11": "Self-Harm.", "S12": "Sexual Content.",
    "S13": "Elections.", "S14": "Code Interpreter Abuse.",
}


def category_names(taxonomy: Taxonomy) -> dict[str, str]:
    """Prompt code -> "Name." for every category of the taxonomy, excluded ones included (the template drops them)."""
    codes = taxonomy.prompt_codes()
    names = dict(PROMPT_NAMES)
    for category in taxonomy.custom:
        names[codes[category.code]] = f"{category.name}. {category.description}".strip()
    return names


def detect_variant(folder: Path) -> str:
    """'lg4' (Llama4ForConditionalGeneration), 'lg3-vision' (Mllama) or 'lg3' (Llama causal LM)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise GuardforgeError(f"{folder} has no config.json: point guard.llama_guard_path at a model folder")
    model_type = json.loads(config_file.read_text()).get("model_type", "")
    if model_type.startswith("llama4"):
        return "lg4"
    if model_type == "mllama":
        return "lg3-vision"
    if model_type == "llama":
        return "lg3"
    raise GuardforgeError(f"{folder} holds a {model_type!r} model, not Llama Guard 3 or 4")


class LlamaGuardBackend:
    """One Llama Guard model for texts and (LG4, LG3-Vision) images.

    P(unsafe) is the softmax over the "safe"/"unsafe" tokens at the decision position (after the blank
    line). Category scores come from the same forward pass with "unsafe\\nS" forced after it: the
    distribution over the category-number tokens, scaled so that the most likely category gets P(unsafe)
    and the others their probability relative to it.
    """

    name = "llama-guard"

    def __init__(self, model, processor, taxonomy: Taxonomy, variant: str, has_template: bool | None = None):
        self.model = model.eval()
        self.processor = processor  # a tokenizer (LG3 text) or a processor with .tokenizer (LG4, LG3-Vision)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.taxonomy = taxonomy
        self.variant = variant
        self.categories = frozenset(taxonomy.codes)
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.has_template = bool(template) if has_template is None else has_template
        self.tokenizer.padding_side = "left"  # the decision token is then the same position for every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._prepare_token_ids()

    @classmethod
    def from_settings(cls, settings, taxonomy: Taxonomy) -> LlamaGuardBackend:
        path = settings.guard.llama_guard_path
        if path is None:
            raise GuardforgeError("guard.llama_guard_path is not set (GUARDFORGE_GUARD__LLAMA_GUARD_PATH)")
        device = settings.device if settings.device != "auto" else None
        return cls.from_pretrained(Path(path), taxonomy, device=device)

    @classmethod
    def from_pretrained(cls, folder: Path, taxonomy: Taxonomy, device: str | None = None,
                        dtype=None) -> LlamaGuardBackend:
        import transformers

        from guardforge.models.devices import large_model_placement

        folder = Path(folder).expanduser()
        variant = detect_variant(folder)
        device, dtype = large_model_placement(device, dtype)
        kwargs = {"dtype": dtype, "local_files_only": True}
        if variant == "lg4":
            model = transformers.Llama4ForConditionalGeneration.from_pretrained(folder, **kwargs)
            processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        elif variant == "lg3-vision":
            model = transformers.MllamaForConditionalGeneration.from_pretrained(folder, **kwargs)
            processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            processor = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(model.to(device), processor, taxonomy, variant)

    # --- prompt -------------------------------------------------------------------------------------------

    def _prepare_token_ids(self) -> None:
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]
        safe, unsafe = encode("safe"), encode("unsafe")
        if not safe or not unsafe or safe[0] == unsafe[0]:
            raise GuardforgeError("the tokenizer cannot tell 'safe' from 'unsafe' by their first token")
        self.safe_id, self.unsafe_id = safe[0], unsafe[0]
        self.suffix_ids = encode(CATEGORY_PREFIX)
        self.number_ids: dict[str, int] = {}
        for ours, shown in self.taxonomy.prompt_codes().items():
            if ours not in self.categories:
                continue
            ids = encode(shown[1:])
            if len(ids) != 1:
                raise GuardforgeError(f"category number {shown[1:]!r} is not one token for this tokenizer")
            self.number_ids[ours] = ids[0]

    def conversation(self, text: str | None = None, image: bool = False) -> list[dict]:
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text or ""}]
        return [{"role": "user", "content": content}]

    def render(self, text: str | None = None, image: bool = False) -> str:
        """The prompt up to (not including) the decision: the model's own chat template when it has one."""
        template_kwargs = {"excluded_category_keys": list(self.taxonomy.excluded)}
        if self.taxonomy.custom or not self.has_template:
            template_kwargs["categories"] = category_names(self.taxonomy)
        messages = self.conversation(text, image)
        if self.has_template:
            rendered = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                          **template_kwargs)
        else:
            rendered = self.tokenizer.apply_chat_template(
                messages, chat_template=LLAMA_GUARD_4_TEMPLATE, tokenize=False, add_generation_prompt=True,
                **template_kwargs)
        if isinstance(rendered, list):
            rendered = rendered[0]
        # LG4 answers "\n\nsafe"; LG3 templates already end in the blank line. Either way, end on it.
        return rendered if rendered.endswith(DECISION_PREFIX) else rendered + DECISION_PREFIX

    # --- scoring ------------------------------------------------------------------------------------------

    def _forward(self, prompts: list[str], images: list[Image.Image] | None = None):
        import torch

        full = [prompt + CATEGORY_PREFIX for prompt in prompts]
        if images is None:
            batch = self.tokenizer(full, add_special_tokens=False, padding=True, return_tensors="pt")
        else:
            batch = self.processor(text=full, images=[[image] for image in images], add_special_tokens=False,
                                   padding=True, return_tensors="pt")
        k = len(self.suffix_ids)
        tail = batch["input_ids"][:, -k:]
        if not bool((tail == torch.tensor(self.suffix_ids)).all()):
            raise GuardforgeError("the prompt and the forced 'unsafe\\nS' did not tokenise apart")
        attention = batch["attention_mask"]
        # Left padding: positions must count real tokens only, or a padded row would see shifted positions.
        batch["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
        first = next(self.model.parameters())
        # Pixels follow the model's dtype: Llama 4's image processor hands out bfloat16 whatever the model.
        batch = {key: value.to(first.device, dtype=first.dtype if value.is_floating_point() else None)
                 for key, value in batch.items()}
        with torch.inference_mode():
            logits = self.model(**batch).logits.float()
        # Position -k-1 predicts the first token of "unsafe": that is the safe/unsafe decision.
        return logits[:, -k - 1, :], logits[:, -1, :]

    def _scores(self, decision_logits, category_logits) -> list[Scores]:
        import torch

        pair = torch.stack([decision_logits[:, self.safe_id], decision_logits[:, self.unsafe_id]], dim=-1)
        p_unsafe = torch.softmax(pair, dim=-1)[:, 1]
        codes = list(self.number_ids)
        numbers = category_logits[:, [self.number_ids[code] for code in codes]]
        relative = torch.softmax(numbers, dim=-1)
        relative = relative / relative.max(dim=-1, keepdim=True).values
        out = []
        for row in range(pair.shape[0]):
            unsafe = float(p_unsafe[row])
            scores = {code: unsafe * float(relative[row, i]) for i, code in enumerate(codes)}
            out.append(Scores(scores=scores, unsafe=unsafe, extra={"variant": self.variant}))
        return out

    def score_texts(self, texts: list[str]) -> list[Scores]:
        if not texts:
            return []
        return self._scores(*self._forward([self.render(text) for text in texts]))

    def score_images(self, images: list[Image.Image]) -> list[Scores]:
        if self.variant == "lg3":
            raise GuardforgeError("Llama Guard 3 1B/8B read text only; use Llama Guard 4 or 3-11B-Vision for images")
        if not images:
            return []
        if self.variant == "lg3-vision":
            # Mllama takes one image per prompt: batch row by row.
            results = []
            for image in images:
                results += self._scores(*self._forward([self.render(image=True)], [image.convert("RGB")]))
            return results
        prompts = [self.render(image=True) for _ in images]
        return self._scores(*self._forward(prompts, [image.convert("RGB") for image in images]))
