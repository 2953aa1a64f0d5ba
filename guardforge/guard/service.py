"""Guard: runs the policy's checkpoints through the text and image backends and records every verdict."""

from __future__ import annotations

import hashlib
import io
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from guardforge.db import Database
from guardforge.errors import GuardBackendError
from guardforge.guard.audit import AuditLog
from guardforge.guard.backends.base import ImageBackend, Scores, TextBackend
from guardforge.guard.blur import strong_blur
from guardforge.guard.moderation import moderation_response, parse_inputs, result_from_verdicts
from guardforge.guard.policy import Policy, judge, load_policy
from guardforge.guard.verdict import SEVERITY, Checkpoint, Verdict
from guardforge.guard.windows import text_windows

Loader = Callable[[], object]
log = logging.getLogger(__name__)


def text_bytes(text: str) -> bytes:
    # surrogatepass: the server refuses lone surrogates at the door, but a CLI argument can still carry one
    # (undecodable bytes in argv arrive as U+DC80..U+DCFF); hashing and auditing it must not crash the check.
    return text.encode("utf-8", "surrogatepass")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text_bytes(text)).hexdigest()


def image_sha256(image: Image.Image) -> str:
    # Over the decoded pixels, not an encoding: the same picture hashes the same whatever file it came in.
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def merge_verdicts(verdicts: list[Verdict]) -> Verdict:
    """One verdict for one text read as several views (whole and windows): the most severe action, every
    category any view violated, and each category's highest score."""
    worst = max(verdicts, key=lambda verdict: SEVERITY[verdict.action])  # the first of the most severe
    if len(verdicts) == 1:
        return worst
    scores: dict[str, float] = {}
    for verdict in verdicts:
        for code, score in verdict.scores.items():
            scores[code] = max(scores.get(code, 0.0), score)
    unsafe = [verdict.unsafe for verdict in verdicts if verdict.unsafe is not None]
    violated = sorted({code for verdict in verdicts for code in verdict.violated}, key=lambda c: (len(c), c))
    return worst.model_copy(update={
        "scores": scores, "violated": violated, "unsafe": max(unsafe) if unsafe else None,
        "error": next((verdict.error for verdict in verdicts if verdict.error), None),
        "content_sha256": verdicts[0].content_sha256,  # the whole text's, as the audit log lists it first
    })


@dataclass(frozen=True)
class PromptReading:
    """Everything the guard scores for one prompt (built by guardforge.studio.prompt_reading): the prompt as
    written, its other readings (the text the engine encodes, windows of a long one), and the prompts its
    negative prompt implies (guard/negation.py) with the reason to give when one of those decides."""

    text: str
    views: tuple[str, ...] = ()
    implied: tuple[str, ...] = ()
    implied_reason: str | None = None


def _most_severe(verdicts: list[Verdict]) -> Verdict:
    """The most severe verdict; among equally severe, the reading that scored highest (the one that says why: the
    engine's text "a naked woman" over the raw "a n(a:1)ked woman" when both are blocked), then the first."""
    return max(verdicts, key=lambda verdict: (SEVERITY[verdict.action], verdict.unsafe or 0.0))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def call_with_timeout(fn: Callable[[], list[Scores]], timeout_s: float) -> list[Scores]:
    """Run fn in a worker thread and wait at most timeout_s; a timeout or an error is a GuardBackendError.

    A timed-out call cannot be killed (Python threads cannot be), so the worker is a daemon thread left to
    finish on its own; its late answer is dropped.
    """
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="guard-backend", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise GuardBackendError(f"backend timed out after {timeout_s:g} s")
    if "error" in outcome:
        exc = outcome["error"]
        raise GuardBackendError(f"backend failed: {type(exc).__name__}: {exc}") from exc
    return outcome["value"]


class Guard:
    """Scores content per hazard category with the configured backends and applies the policy.

    Backends are given as objects or as loaders (called once, on first use): a checkpoint that is off never
    loads a model, and building a Guard never does.
    """

    def __init__(self, policy: Policy, *, text_backend: object | Loader | None = None,
                 image_backend: object | Loader | None = None, audit: AuditLog | None = None,
                 timeout_s: float = 30.0, store_content: bool = False) -> None:
        self.policy = policy
        self.policy_hash = policy.hash
        self.audit = audit
        self.timeout_s = timeout_s
        self.store_content = store_content
        self._sources = {"text": text_backend, "image": image_backend}
        self._loaded: dict[str, object] = {}
        self._load_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, database: Database | None = None) -> Guard:
        """The guard the settings describe, auditing into `database` (the Studio's, shared with the job queue);
        without one, into a Database of its own on settings.database_url (a `guard check` alone)."""
        from guardforge.guard.registry import as_prompt_reader, build_backend

        guard_settings = settings.guard
        policy = load_policy(guard_settings.policy)
        taxonomy = policy.taxonomy
        shared: dict[str, object] = {}  # llama-guard / openai-compatible: one object for text and images

        def loader(modality: str) -> Loader:
            name = guard_settings.text_backend if modality == "text" else guard_settings.image_backend

            def build() -> object:
                from guardforge.guard.registry import backend_info

                if backend_info(name).shared:
                    if name not in shared:
                        shared[name] = build_backend(name, modality, settings, taxonomy)
                    return shared[name]
                return build_backend(name, modality, settings, taxonomy)

            def load() -> object:
                return as_prompt_reader(build(), settings) if modality == "text" else build()
            return load

        return cls(policy, text_backend=loader("text"), image_backend=loader("image"),
                   audit=AuditLog(database or Database(settings.resolved_database_url)),
                   timeout_s=guard_settings.timeout_s,
                   store_content=guard_settings.audit_store_content)

    # --- backends -------------------------------------------------------------------------------------

    def backend(self, modality: str):
        """The loaded backend for "text" or "image" (loading it now if needed)."""
        with self._load_lock:
            if modality not in self._loaded:
                source = self._sources[modality]
                if source is None:
                    raise GuardBackendError(f"no {modality} backend configured")
                # A backend object (tests, a caller's own), or a class or factory that builds one on first use.
                is_backend = (not isinstance(source, type)
                              and isinstance(source, TextBackend if modality == "text" else ImageBackend))
                self._loaded[modality] = source if is_backend else source()
            return self._loaded[modality]

    # --- verdicts -------------------------------------------------------------------------------------

    def _off(self, checkpoint: Checkpoint, sha: str) -> Verdict:
        return Verdict(checkpoint=checkpoint, backend="off", action="allow", content_sha256=sha,
                       policy_hash=self.policy_hash)

    def _failed(self, checkpoint: Checkpoint, sha: str, backend: str, error: str, latency_ms: float) -> Verdict:
        # closed: nothing unchecked goes through; open: it goes through, flagged, with the reason.
        action = "block" if self.policy.fail_mode == "closed" else "flag"
        return Verdict(checkpoint=checkpoint, backend=backend, action=action, error=error, latency_ms=latency_ms,
                       content_sha256=sha, policy_hash=self.policy_hash)

    def _from_scores(self, checkpoint: Checkpoint, sha: str, backend: str, result: Scores,
                     latency_ms: float) -> Verdict:
        scores, unsafe, violated, action = judge(self.policy, result, checkpoint)
        return Verdict(checkpoint=checkpoint, scores=scores, unsafe=unsafe, violated=violated,
                       action=action, backend=backend, latency_ms=latency_ms, labels_only=result.labels_only,
                       content_sha256=sha, policy_hash=self.policy_hash)

    def _run(self, checkpoint: Checkpoint, modality: str, items: list, hashes: list[str],
             contents: list[Callable[[], bytes]]) -> list[Verdict]:
        if not items:
            return []
        if not self.policy.checkpoints.enabled(checkpoint):
            verdicts = [self._off(checkpoint, sha) for sha in hashes]
        else:
            verdicts = self._score(checkpoint, modality, items, hashes)
        self._record(verdicts, contents)
        return verdicts

    def _record(self, verdicts: list[Verdict], contents: list[Callable[[], bytes]]) -> None:
        """Write the verdicts to the audit log, the whole batch in one transaction.

        A failed write (the database down or restarting, its disk full) does not fail the check: the verdicts
        were reached and their actions stand (a block still blocks), so nothing unchecked leaves; only their
        rows are missing. That is logged at ERROR, once per batch, with what the rows would have said, so the
        server's log holds what the table lost. The policy's fail mode is for backend errors, where there is no
        verdict; it does not apply here."""
        if self.audit is None:
            return
        try:
            self.audit.record_many([(verdict, content() if self.store_content else None)
                                    for verdict, content in zip(verdicts, contents, strict=True)])
        except Exception as exc:
            # The driver's own error, not SQLAlchemy's text of it: that lists the statement's parameters, which
            # hold the content itself when guard.audit_store_content is on.
            cause = getattr(exc, "orig", None) or exc
            log.error("audit log: %d %s verdict(s) not recorded (%s: %s); actions %s, sha256 %s",
                      len(verdicts), verdicts[0].checkpoint, type(cause).__name__, str(cause).strip(),
                      [verdict.action for verdict in verdicts], [verdict.content_sha256 for verdict in verdicts])

    def _score(self, checkpoint: Checkpoint, modality: str, items: list, hashes: list[str]) -> list[Verdict]:
        started = time.perf_counter()
        name = "unknown"
        try:
            backend = self.backend(modality)
            # A verdict's latency is the check's, not the one-off load before the first one (docs/guard.md).
            started = time.perf_counter()
            name = getattr(backend, "name", type(backend).__name__)
            call = backend.score_texts if modality == "text" else backend.score_images
            results = call_with_timeout(lambda: call(list(items)), self.timeout_s)
            if len(results) != len(items):
                raise GuardBackendError(f"backend returned {len(results)} answers for {len(items)} inputs")
            for result in results:
                # NaN compares false with every threshold, so it would read as "allow": a broken answer is an error.
                values = [*result.scores.values(), *([] if result.unsafe is None else [result.unsafe])]
                if not all(math.isfinite(value) for value in values):
                    raise GuardBackendError("backend returned a score that is not a finite number")
        except Exception as exc:  # any failure, including loading: the fail mode decides
            elapsed = (time.perf_counter() - started) * 1000
            message = str(exc) if isinstance(exc, GuardBackendError) else f"{type(exc).__name__}: {exc}"
            return [self._failed(checkpoint, sha, name, message, elapsed) for sha in hashes]
        # Backends score a batch in one call: each verdict carries the batch's wall time.
        elapsed = (time.perf_counter() - started) * 1000
        return [self._from_scores(checkpoint, sha, name, result, elapsed)
                for sha, result in zip(hashes, results, strict=True)]

    # --- checkpoints ----------------------------------------------------------------------------------

    def check_texts(self, texts: list[str], checkpoint: Checkpoint = "prompt") -> list[Verdict]:
        return self._run(checkpoint, "text", texts, [text_sha256(t) for t in texts],
                         [lambda t=t: text_bytes(t) for t in texts])

    def check_prompt(self, text: str, variants: Sequence[str] = ()) -> Verdict:
        """The prompt's verdict. `variants`: other readings of the same prompt that must pass too (the text the
        engine will encode, its parts); all are scored in one batch and the most severe verdict stands."""
        return self.check_prompts([PromptReading(text, tuple(variants))])[0]

    def check_prompts(self, readings: Sequence[PromptReading]) -> list[Verdict]:
        """One verdict per prompt, every reading of every prompt scored in one batch: one backend call, under
        one guard.timeout_s (a caller with many prompts sends them in chunks, see `guard check --file`).

        A prompt's verdict is the most severe of its own readings', unless one of its implied prompts is more
        severe still: then that one's, with the reading's `implied_reason` as its `reason`."""
        groups = []
        for reading in readings:
            own = list(dict.fromkeys([reading.text, *reading.views]))
            groups.append((own, [text for text in dict.fromkeys(reading.implied) if text not in own]))
        scored = iter(self.check_texts([text for own, implied in groups for text in (*own, *implied)], "prompt"))
        verdicts = []
        for reading, (own, implied) in zip(readings, groups, strict=True):
            verdict = _most_severe([next(scored) for _ in own])
            if implied:
                by_implied = _most_severe([next(scored) for _ in implied])
                if SEVERITY[by_implied.action] > SEVERITY[verdict.action]:
                    verdict = by_implied.model_copy(update={"reason": reading.implied_reason})
            verdicts.append(verdict)
        return verdicts

    def check_images(self, images: list[Image.Image], checkpoint: Checkpoint) -> list[Verdict]:
        images = [image.convert("RGB") for image in images]
        return self._run(checkpoint, "image", images, [image_sha256(i) for i in images],
                         [lambda i=i: _png(i) for i in images])

    def check_input_image(self, image: Image.Image) -> Verdict:
        return self.check_images([image], "input_image")[0]

    def check_output_images(self, images: list[Image.Image]) -> list[Verdict]:
        return self.check_images(images, "output_image")

    def check_training_data(self, images: list[tuple[str, Image.Image]], prompts: list[str]) -> list[Verdict]:
        """DreamBooth data: the instance images, then the prompts, in that order."""
        return (self.check_images([image for _, image in images], "training_data")
                + self.check_texts(list(prompts), "training_data"))

    def enforce(self, image: Image.Image, verdict: Verdict) -> Image.Image | None:
        """What may leave: None when blocked, an unrecognisable blur when blurred, else the image."""
        if verdict.action == "block":
            return None
        if verdict.action == "blur":
            return strong_blur(image)
        return image

    def moderate(self, inputs, max_pixels: int) -> dict:
        """An OpenAI moderation response for a string, a list of strings, or text/image content parts
        (images over `max_pixels` are refused before they are decoded)."""
        parsed = parse_inputs(inputs, max_pixels)
        # Every text with its windows (guard.windows) in one batch, as a generation's prompt is read.
        views = [[value, *text_windows(value)] for parts in parsed for kind, value in parts if kind == "text"]
        text_verdicts = iter(self.check_texts([view for text in views for view in text], "prompt"))
        merged = iter([merge_verdicts([next(text_verdicts) for _ in text]) for text in views])
        results = []
        for parts in parsed:
            images = [value for kind, value in parts if kind == "image"]
            verdicts = ([("text", next(merged)) for kind, _ in parts if kind == "text"]
                        + [("image", v) for v in self.check_images(images, "input_image")])
            results.append(result_from_verdicts(verdicts))
        return moderation_response(self.model_name, results)

    @property
    def model_name(self) -> str:
        if not self.policy.any_checkpoint_on:
            return "guardforge-off"
        names = []
        for modality in ("text", "image"):
            backend = self._loaded.get(modality)
            if backend is not None:
                names.append(getattr(backend, "name", type(backend).__name__))
        return "guardforge-" + ("+".join(dict.fromkeys(names)) or "guard")

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
