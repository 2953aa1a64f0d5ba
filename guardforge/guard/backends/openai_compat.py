"""Llama Guard behind an OpenAI-compatible chat completions server (vLLM, OpenRouter, Ollama)."""

from __future__ import annotations

import base64
import io
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import httpx
from PIL import Image

from guardforge.errors import GuardBackendError, GuardforgeError
from guardforge.guard.backends.base import Scores
from guardforge.guard.backends.llama_guard import category_names, parse_output
from guardforge.guard.taxonomy import Taxonomy

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def resolve_endpoint(guard_settings) -> tuple[str | None, str | None]:
    """Base URL and key: guard settings (GUARDFORGE_GUARD__OPENAI_*) first, then OPENAI_BASE_URL / OPENAI_API_KEY."""
    base_url = guard_settings.openai_base_url or os.environ.get("OPENAI_BASE_URL")
    api_key = guard_settings.openai_api_key or os.environ.get("OPENAI_API_KEY")
    return (base_url.rstrip("/") if base_url else None), api_key


def image_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _prob_of(top: list[dict], word: str) -> float | None:
    for entry in top:
        if entry.get("token", "").strip() == word:
            return math.exp(entry["logprob"])
    return None


class OpenAICompatBackend:
    """Texts and images to /chat/completions; P(unsafe) from the returned logprobs, else labels only.

    With logprobs, P(unsafe) is the renormalised probability of "unsafe" against "safe" at the first
    non-blank answer token, and category scores come from the top logprobs at the first category number
    (the top category gets P(unsafe), the others their probability relative to it). When the answer is
    "safe" no category number is generated, so every category gets P(unsafe), an upper bound.
    """

    name = "openai-compatible"

    def __init__(self, base_url: str, model: str, taxonomy: Taxonomy, api_key: str | None = None,
                 timeout_s: float = 30.0, max_retries: int = 3, backoff_s: float = 0.5, concurrency: int = 4,
                 max_tokens: int = 20) -> None:
        if not base_url:
            raise GuardforgeError("openai-compatible guard needs a base URL (guard.openai_base_url or OPENAI_BASE_URL)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.taxonomy = taxonomy
        self.categories = frozenset(taxonomy.codes)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self._slots = threading.BoundedSemaphore(concurrency)  # at most this many requests in flight
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)))
        self._back = {shown: ours for ours, shown in taxonomy.prompt_codes().items() if ours in self.categories}

    @classmethod
    def from_settings(cls, settings, taxonomy: Taxonomy) -> OpenAICompatBackend:
        base_url, api_key = resolve_endpoint(settings.guard)
        return cls(base_url, settings.guard.openai_model, taxonomy, api_key=api_key,
                   timeout_s=settings.guard.timeout_s)

    # --- HTTP -----------------------------------------------------------------------------------------

    def payload(self, content: list[dict]) -> dict:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": 20,
        }
        if self.taxonomy.excluded or self.taxonomy.custom:
            # vLLM passes these to Llama Guard's chat template; servers that do not know the field ignore it.
            kwargs: dict = {"excluded_category_keys": list(self.taxonomy.excluded)}
            if self.taxonomy.custom:
                kwargs["categories"] = category_names(self.taxonomy)
            body["chat_template_kwargs"] = kwargs
        return body

    def _post(self, body: dict) -> dict:
        with self._slots:
            for attempt in range(self.max_retries + 1):
                retry_after = None
                try:
                    response = self.client.post("/chat/completions", json=body)
                except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code not in RETRY_STATUS:
                        if response.status_code >= 400:
                            raise GuardBackendError(f"guard server answered {response.status_code}: "
                                                    f"{response.text[:200]}")
                        return response.json()
                    problem = f"guard server answered {response.status_code}"
                    retry_after = response.headers.get("retry-after")
                if attempt == self.max_retries:
                    raise GuardBackendError(f"{problem} (after {self.max_retries + 1} attempts)")
                delay = self.backoff_s * (2 ** attempt)
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, min(float(retry_after), 30.0))
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- answers --------------------------------------------------------------------------------------

    def scores_from_response(self, response: dict) -> Scores:
        choice = response["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        tokens = ((choice.get("logprobs") or {}).get("content")) or []
        unsafe_said, named = parse_output(text, self.taxonomy)
        decision = next((t for t in tokens if t.get("token", "").strip()), None)
        top = (decision or {}).get("top_logprobs") or []
        p_safe, p_unsafe = _prob_of(top, "safe"), _prob_of(top, "unsafe")
        if p_safe is None and p_unsafe is None:
            # No logprobs, or no top_logprobs at the decision (some providers send only the chosen token's):
            # the answer's words are all there is.
            scores = {code: (1.0 if code in named else 0.0) for code in self.categories}
            return Scores(scores=scores, unsafe=1.0 if unsafe_said else 0.0, labels_only=True, extra={"text": text})
        unsafe = (p_unsafe or 0.0) / ((p_unsafe or 0.0) + (p_safe or 0.0))
        # Without a generated category number (a "safe" answer) nothing says which category P(unsafe) belongs
        # to: giving it to every category would let a 0.25 on a harmless prompt cross S4's 0.2 and block it.
        # The categories the answer names get P(unsafe); the policy's `overall` rule judges P(unsafe) itself.
        scores = {code: (unsafe if code in named else 0.0) for code in self.categories}
        number_top = self._category_number_logprobs(tokens)
        if number_top:
            probs = {self._back[f"S{e['token'].strip()}"]: math.exp(e["logprob"]) for e in number_top
                     if e.get("token", "").strip().isdigit() and f"S{e['token'].strip()}" in self._back}
            top_p = max(probs.values(), default=0.0)
            scores = {code: (unsafe * probs.get(code, 0.0) / top_p if top_p else 0.0) for code in self.categories}
        return Scores(scores=scores, unsafe=unsafe, extra={"text": text})

    @staticmethod
    def _category_number_logprobs(tokens: list[dict]) -> list[dict]:
        # The first number after an "S" token (or a token ending in "S") is the first category's number.
        for previous, token in pairwise(tokens):
            if previous.get("token", "").strip().endswith("S") and token.get("token", "").strip().isdigit():
                return token.get("top_logprobs") or []
        return []

    def _score_all(self, contents: list[list[dict]]) -> list[Scores]:
        def one(content):
            return self.scores_from_response(self._post(self.payload(content)))

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="guard-http") as pool:
            return list(pool.map(one, contents))

    def score_texts(self, texts: list[str]) -> list[Scores]:
        return self._score_all([[{"type": "text", "text": text}] for text in texts])

    def score_images(self, images: list[Image.Image]) -> list[Scores]:
        return self._score_all([[{"type": "image_url", "image_url": {"url": image_data_url(image)}}]
                                for image in images])

    def close(self) -> None:
        self.client.close()
