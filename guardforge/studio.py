"""Studio: the one object that owns everything loaded, and the few methods every interface calls."""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable
from functools import cached_property
from threading import Event
from typing import TYPE_CHECKING, NamedTuple

from guardforge.access.caller import LOCAL, Caller, Charge
from guardforge.engine import prompt_templates
from guardforge.engine.request import GeneratedImage, GenerationRequest, GenerationResult, ProgressEvent
from guardforge.engine.upscalers import UpscaleRequest, UpscaleResult
from guardforge.errors import InvalidRequest
from guardforge.guard.service import PromptReading
from guardforge.guard.verdict import SEVERITY
from guardforge.guard.windows import GUARD_WINDOW_WORDS, text_windows  # noqa: F401 (GUARD_WINDOW_WORDS: re-exported)
from guardforge.imaging import decode_image
from guardforge.models.loading import check_checkpoint, check_vae
from guardforge.settings import Settings

if TYPE_CHECKING:  # the queue's module loads SQLAlchemy: a one-off CLI generate needs neither
    from guardforge.jobs.queue import Job

ProgressCallback = Callable[[ProgressEvent], None]


def encoded_prompt_views(prompt: str) -> list[str]:
    """What the engine reads of a prompt, for the guard: the text without `<lora:...>` tags and weighting syntax
    ("a n(a:1)ked" encodes as "a naked"), and for a long one, overlapping windows of it."""
    from guardforge.engine.prompts import extract_lora_tags, plain_text

    without_tags, _ = extract_lora_tags(prompt)
    text = plain_text(without_tags)
    return [text] + text_windows(text)


class RequestTexts(NamedTuple):
    prompt: str
    negative_prompt: str
    # Hires fix's second pass, where its texts differ from the first pass's; None: no other texts.
    hires_prompt: str | None = None
    hires_negative_prompt: str | None = None


def request_texts(request: GenerationRequest) -> RequestTexts:
    """Every text a generation reads, as the engine will be given it. Styles and dynamic prompts are expanded
    before (engine/prompt_templates.py, per image): called on each image's expanded request, whose texts the
    engine is then handed, so that what the guard reads (prompt_reading) is what the engine encodes."""
    hires = request.hires
    if hires is not None and (hires.prompt, hires.negative_prompt) != (None, None):
        return RequestTexts(request.prompt, request.negative_prompt,
                            request.prompt if hires.prompt is None else hires.prompt,
                            request.negative_prompt if hires.negative_prompt is None else hires.negative_prompt)
    return RequestTexts(request.prompt, request.negative_prompt)


def prompt_reading(prompt: str, negative_prompt: str = "") -> PromptReading:
    """What the guard scores for a prompt and its negative prompt: the prompt as typed and as the engine encodes
    it (encoded_prompt_views), and, when the negative prompt (or a weight below 0 in the prompt) asks for
    something by negation (guard/negation.py), the prompt as it would read if it asked outright, whole and in
    the same windows. Used by generate and by `guard check`, so both read a prompt alike. InvalidRequest when
    the engine would refuse a text (an attention weight or <lora:> tag that does not parse)."""
    from guardforge.engine.prompts import extract_lora_tags, prompt_chunks
    from guardforge.guard.negation import read_negation

    views = encoded_prompt_views(prompt)
    # Read as the engine reads each: the prompt without its LoRA tags; the negative prompt whole (the engine
    # takes no LoRA from it).
    negative_parts = prompt_chunks(negative_prompt)
    negation = read_negation(negative_parts, prompt_chunks(extract_lora_tags(prompt)[0]))
    if not negation:
        return PromptReading(prompt, tuple(views))
    text = views[0]
    implied = [negation.implied_prompt(text)] + [negation.implied_prompt(window) for window in text_windows(text)]
    return PromptReading(prompt, tuple(views), tuple(implied), negation.reason(implied[0]))


class Studio:
    """Built from Settings; owns the model registry and cache, the engine, the guard and the output store.

    Each service the settings would build can be handed in instead (a guard with other backends, a database
    another process also uses, an output store elsewhere): what is given is used, the rest is built."""

    def __init__(self, settings: Settings | None = None, *, guard=None, database=None, store=None):
        from guardforge.db import Database
        from guardforge.engine.pipelines import Engine
        from guardforge.engine.upscalers import Upscalers
        from guardforge.guard.service import Guard
        from guardforge.models.cache import PipelineCache
        from guardforge.models.registry import ModelRegistry
        from guardforge.storage.outputs import OutputStore

        self.settings = settings or Settings()
        self.registry = ModelRegistry(self.settings)
        self.pipelines = PipelineCache(self.registry, self.settings)
        self.upscalers = Upscalers(self.settings, self.registry)
        # The registry resolves <lora:name> tags; the upscalers serve hires fix.
        self.engine = Engine(self.settings, self.registry, upscalers=self.upscalers)
        # One database for the job queue, the key store and the guard's audit log. Building it touches nothing:
        # its engine is made on first use (the guard's first audit row, or the queue's first call).
        self.database = database or Database(self.settings.resolved_database_url)
        self.guard = guard or Guard.from_settings(self.settings, self.database)
        self.store = store or OutputStore(self.settings.resolved_outputs_location, self.settings.output_format,
                                          self.settings.storage.options)

    # -- the job queue (built on first use, so a one-off CLI generate never touches the database) --------
    @cached_property
    def jobs(self):
        from guardforge.jobs.queue import JobQueue

        return JobQueue(self.database, self.settings.jobs.max_queue, self.settings.jobs.requeue_running_on_restart,
                        lease_s=self.settings.jobs.lease_s)

    @cached_property
    def scripts(self):
        """The installed scripts (guardforge/scripts/), found through their entry points on first use."""
        from guardforge.scripts import ScriptRegistry

        return ScriptRegistry.from_entry_points()

    @cached_property
    def keys(self):
        from guardforge.access.keys import KeyStore

        return KeyStore(self.database)

    @cached_property
    def events(self):
        from guardforge.jobs.events import ProgressHub

        return ProgressHub()

    @cached_property
    def workers(self):
        from guardforge.jobs.worker import WorkerPool
        from guardforge.models.devices import worker_devices

        retention = self.settings.jobs.retention_hours
        return WorkerPool(self.jobs, self.events, self.generate,
                          worker_devices(self.settings.devices, self.settings.device), train=self.run_dreambooth_job,
                          grid=self.generate_grid,
                          retention_s=retention * 3600 if retention else None,
                          cpu_threads=self.settings.jobs.cpu_threads, poll_s=self.settings.jobs.claim_poll_s)

    # -- models ------------------------------------------------------------------------------------------------
    def models(self, kind: str | None = None) -> list:
        """The registry's entries (checkpoints, LoRAs, VAEs), the models folder rescanned when it changed."""
        return self.registry.list(kind)

    def model(self, name: str | None = None):
        """The checkpoint a name, file name, A1111 title or hash means (None: the default model)."""
        return self.registry.resolve(name or self.settings.default_model)

    def usable_vae(self, name: str):
        """The VAE `name` means (a registry name, a file name, a hash), refused now (ModelNotFound,
        UnsafeModelFormat) for what would fail the generation later."""
        entry = self.registry.resolve(name, kind="vae")
        check_vae(entry, self.settings)
        return entry

    def usable_controlnet(self, name: str, checkpoint=None):
        """The ControlNet `name` means (registry name, A1111 title `name [hash]`, file name), refused now for what
        would fail the generation later (ModelNotFound, a pickle, a class guardforge does not run, and, given the
        `checkpoint` entry, an architecture that does not fit its UNet)."""
        from guardforge.models.controlnet_loading import check_controlnet, check_fits

        entry = self.registry.resolve(name, kind="controlnet")
        check_controlnet(entry, self.settings)
        if checkpoint is not None:
            check_fits(entry, checkpoint)
        return entry

    def prompt_styles(self) -> dict:
        """The A1111 styles of <home>/styles.csv and <home>/styles/*.csv by name, read now: an edit applies to the
        next request."""
        from guardforge.engine.styles import read_styles, styles_files

        return read_styles(styles_files(self.settings.home))

    def styled(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its styles merged into its texts and none left to apply (InvalidRequest names an
        unknown style): what the UI's style picker puts in the prompt boxes, and a reused job shows."""
        return prompt_templates.styled(request, self.prompt_styles() if request.styles else {})

    def wildcards(self):
        """The wildcards of <home>/wildcards (engine/dynamic_prompts.py), for one request: its files read once
        each, when first used."""
        from guardforge.engine.dynamic_prompts import Wildcards

        return Wildcards(self.settings.home / "wildcards")

    def refresh_models(self) -> None:
        self.registry.refresh()

    def merge_models(self, request, caller: Caller = LOCAL):
        """Merge checkpoints as A1111's checkpoint merger does (models/merge.py's MergeRequest), streamed into the
        models folder; the result (MergeResult) is hashed and listed at once."""
        from guardforge.models.merge import merge_checkpoints

        caller.spend(1)
        return merge_checkpoints(self.registry, request)

    def usable_checkpoint(self, name: str):
        """The checkpoint `name` means, refused now (ModelNotFound, UnsafeModelFormat) for whatever would fail
        every generation made with it later: a pickle above all."""
        entry = self.registry.resolve(name)
        check_checkpoint(entry, self.settings)
        return entry

    def usable_refiner(self, request: GenerationRequest, model=None):
        """The refiner checkpoint a request names (None when it names none), refused now as usable_checkpoint
        refuses, and when it cannot take over from the request's model (engine/refiner.py's check_refiner).
        `model`: the request's model entry, when resolved already."""
        from guardforge.engine.refiner import check_refiner

        if request.refiner is None:
            return None
        entry = self.usable_checkpoint(request.refiner.checkpoint)
        check_refiner(request, model or self.model(request.model), entry)
        return entry

    def start_workers(self) -> list[str]:
        """Start one worker per device; returns the ids of jobs a dead server had left running."""
        return self.workers.start()

    def drain_workers(self) -> None:
        """Take no new job; the running ones finish (a stop signal's first step)."""
        self.workers.drain()

    def worker_status(self) -> dict:
        """{started, devices, dead, running}: whether the workers run, each one's device, the indexes of any whose
        thread ended (it runs nothing more), the ids of the jobs they run now."""
        return {"started": self.workers.started, "devices": [worker.device for worker in self.workers.workers],
                "dead": self.workers.dead(),
                "running": [job for worker in self.workers.workers if (job := worker.running_job()) is not None]}

    def queue_depth(self) -> int:
        """Jobs waiting in the queue."""
        return self.jobs.depth()

    def stop_workers(self) -> None:
        if "workers" in self.__dict__:
            self.workers.stop()

    def caller(self, key_id: str | None = None, max_priority: int | None = None,
               charge: Charge | None = None) -> Caller:
        """The Caller for an API key (None: the open server's or the CLI's own user): the per-key rules of the
        settings, the key's own priority cap, and the rate-limit bucket the interface spends from."""
        if key_id is None:
            return Caller(charge=charge)
        return Caller(owner=key_id, key_id=key_id, max_priority=max_priority,
                      max_active=self.settings.server.max_active_jobs_per_key, charge=charge)

    def submit(self, request: GenerationRequest, caller: Caller = LOCAL, priority: int = 0,
               save: bool = True) -> Job:
        """Check the request now (the caller's caps, limits, images, model) so a bad one fails at the door, then
        queue it. The caller's rate limit is spent between the checks that cost nothing and those that work."""
        caller.check_priority(priority)
        request.check_limits(self.settings.limits)
        scripts = self.scripts.plan(request)  # an unknown script or bad args: refused now, not in a worker
        planned = self._planned_run(scripts, request)
        caller.spend(1)
        self.check_request(request)
        for each in planned:  # a selectable script's generations, checked as the request is
            self.check_request(each)
        job_id = self.jobs.submit("generate", {"request": request.model_dump(mode="json"), "save": save},
                                  owner=caller.owner, priority=priority, max_active_for_owner=caller.max_active)
        self.workers.notify()
        return self.jobs.get(job_id, caller.owner)  # with its place in the queue

    def check_request(self, request: GenerationRequest) -> None:
        """What would fail the request in a worker, refused now (InvalidRequest, ModelNotFound, ...): its images,
        model, ControlNets, IP-Adapter, VAE, refiner, what the engine refuses, and its fit with the model."""
        max_pixels = self.settings.limits.max_image_pixels
        if request.init_image is not None:
            image = decode_image(request.init_image, max_pixels, "init_image")
            if request.outpaint is not None:  # the canvas's size is known once the image is
                from guardforge.engine.outpaint import check_canvas

                check_canvas(request, image.size, self.settings.limits)
        if request.mask is not None:
            decode_image(request.mask, max_pixels, "mask")
        checkpoint = self.usable_checkpoint(request.model or self.settings.default_model)
        if request.styles or prompt_templates.is_dynamic(request):
            # An unknown style or a missing wildcard fails at the door; the styled texts are what the engine checks.
            request = prompt_templates.check(request, self.prompt_styles() if request.styles else {},
                                             self.wildcards())
        if request.hires is not None and not (request.width and request.height):
            # A size left to the model: its hires size is known from its configs, and refused now, not in a worker.
            from guardforge.engine.hires import check_hires_size

            native_w, native_h = self.native_size(request.model)
            check_hires_size(request.width or native_w, request.height or native_h, request.hires,
                             self.settings.limits)
        for index, unit in enumerate(request.controlnet):
            if unit.image is not None:
                decode_image(unit.image, max_pixels, f"controlnet[{index}].image")
            self.usable_controlnet(unit.model, checkpoint)
        if request.ip_adapter is not None:
            from guardforge.engine.ip_adapter import prepare_ip_adapter

            prepare_ip_adapter(self.registry, self.settings, request.ip_adapter, checkpoint, max_pixels)
        if request.vae is not None:  # an unknown or pickled VAE fails here, as the model does, not in the worker
            self.usable_vae(request.vae)
        self.usable_refiner(request, checkpoint)
        self.engine.check(request)
        self._check_model_fit(request, checkpoint)

    def job(self, job_id: str, caller: Caller = LOCAL) -> Job:
        """One of the caller's jobs (JobNotFound for another's: whose it is stays unsaid)."""
        return self.jobs.get(job_id, caller.owner)

    def list_jobs(self, caller: Caller = LOCAL, limit: int = 50, state: str | None = None,
                  kind: str | None = None) -> list[Job]:
        """The caller's jobs, newest first."""
        return self.jobs.list(caller.owner, limit=limit, state=state, kind=kind)

    def history(self, caller: Caller = LOCAL, where=None, limit: int = 60) -> list[Job]:
        """The caller's generations matching `where` (a jobs.history.HistoryFilter), newest first, with images."""
        from guardforge.jobs.history import SCAN, HistoryFilter
        from guardforge.jobs.queue import JobNotFound

        where = where or HistoryFilter()
        since, until = where.window()
        found = [job_id for job_id, result in self.jobs.results(caller.owner, "generate", since, until, SCAN)
                 if where.matches(result)]
        jobs = []
        for job_id in found[:limit]:
            try:
                jobs.append(self.jobs.get(job_id, caller.owner))  # with its images and its request
            except JobNotFound:  # deleted since it was listed
                continue
        return jobs

    def delete_job(self, job_id: str, caller: Caller = LOCAL) -> int:
        """Remove one of the caller's ended jobs: its row, its images' rows and the files it saved (the verdict
        beside each too). Returns how many files went. The guard's audit log keeps its verdicts."""
        return sum(self.store.delete(path) for path in self.jobs.delete(job_id, caller.owner))

    def active_job(self, caller: Caller = LOCAL, kind: str = "generate") -> Job | None:
        """The caller's job that runs now, else the next of its queued ones (A1111's one current job)."""
        return self.jobs.active_for(caller.owner, kind=kind)

    def subscribe(self, job_id: str):
        """A context manager whose `await .get(timeout)` hands over the job's progress events as they come."""
        return self.events.subscribe(job_id)

    def latest_event(self, job_id: str) -> dict | None:
        """The newest progress event of a running job (step, total, eta; training phases), kept in memory where
        this server runs it (one run by another server: its Job's `progress`, as that server saved it)."""
        return self.events.latest(job_id)

    def runs_here(self, job_id: str) -> bool:
        """Whether this server's workers run the job, so that its events come as they happen (subscribe);
        those of a job another server runs are read from the database."""
        return "workers" in self.__dict__ and self.workers.runs(job_id)

    async def wait(self, job_id: str, caller: Caller = LOCAL) -> Job:
        """Await the end of one of the caller's jobs without holding the event loop: woken by its final event,
        the database read again every 5 s (every jobs.remote_poll_s while another server runs it) and at each wake,
        in a thread."""
        import asyncio

        from guardforge.jobs.queue import TERMINAL

        with self.subscribe(job_id) as subscription:
            while True:
                job = await asyncio.to_thread(self.jobs.get, job_id, caller.owner)
                if job.state in TERMINAL:
                    return job
                # A job run by another server on the same database publishes nothing here: read it every remote_poll_s.
                poll_s = 5 if self.runs_here(job_id) else self.settings.jobs.remote_poll_s
                event = await subscription.get(timeout=poll_s)
                while event is not None and not event.get("final"):
                    event = await subscription.get(timeout=poll_s)

    def cancel(self, job_id: str, caller: Caller = LOCAL, reason: str = "cancelled"):
        """Cancel a queued job now, or a running one between two steps."""
        job = self.jobs.cancel(job_id, caller.owner)
        if job.state == "running":
            self.workers.cancel(job_id, reason)
        elif job.state == "cancelled":
            # No worker will ever publish an end for a job that never ran: without this, event streams and
            # waiting A1111 calls would only notice at their next poll of the database.
            self.events.publish(job_id, {"type": "done", "final": True, "state": "cancelled", "error": job.error})
        return job

    def skip(self, job_id: str, caller: Caller = LOCAL) -> bool:
        """A1111's skip: end the running job's current batch early and go on with the next one."""
        self.jobs.get(job_id, caller.owner)  # the caller's job, or JobNotFound
        return self.workers.skip(job_id)

    def interrupt(self, job_id: str, caller: Caller = LOCAL) -> bool:
        """A1111's interrupt: end the running job's current batch early, run no more, deliver what was made."""
        self.jobs.get(job_id, caller.owner)
        return self.workers.interrupt(job_id)

    def stop_reason(self, job_id: str) -> str | None:
        """Why a running job was asked to stop early ("skipped", "interrupted", "cancelled"), if it was."""
        return self.workers.reason(job_id)

    def forget_job_images(self, job_id: str) -> bool:
        """Drop an ended job's pixels (its images kept in the database, its init image and mask), keeping the job
        and its infotexts: an A1111 call with save_images=false keeps nothing once answered. False when the job
        had not ended (a worker still needs its payload) or was purged already."""
        return bool(self.jobs.purge(job_id=job_id))

    def prune_jobs(self, older_than_hours: float | None = None) -> int:
        """Drop the pixels of every job that ended more than `older_than_hours` ago (default:
        jobs.retention_hours); running and queued jobs are never touched. Returns how many jobs were purged."""
        hours = older_than_hours if older_than_hours is not None else self.settings.jobs.retention_hours
        if hours is None:
            raise InvalidRequest("no age given and jobs.retention_hours is not set (keep forever): say how old, "
                                 "e.g. --older-than 24")
        if hours < 0:
            raise InvalidRequest(f"the age must be 0 hours or more, not {hours}")
        return self.jobs.purge(finished_before=time.time() - hours * 3600)

    def image_bytes(self, image_id: str, caller: Caller = LOCAL) -> tuple[bytes, str]:
        """A delivered image of one of the caller's jobs and its media type; blocked images have none."""
        from pathlib import Path

        from guardforge.jobs.queue import JobNotFound

        stored = self.jobs.image(image_id, caller.owner)
        if stored.path:
            path = Path(stored.path)
            try:
                data = self.store.read(stored.path)
            except FileNotFoundError:  # the outputs folder is the user's: files get moved, pruned, deleted
                raise JobNotFound(f"image {image_id!r} is no longer in the outputs folder (its file was moved "
                                  "or deleted)") from None
            return data, {".jpg": "image/jpeg", ".webp": "image/webp"}.get(path.suffix, "image/png")
        if stored.data:
            return base64.b64decode(stored.data), "image/png"
        raise JobNotFound(f"image {image_id!r} was withheld by the guard ({stored.action})")

    def moderation_cost(self, inputs) -> int:
        """Rate-limit tokens a moderation call costs, by its size; InvalidRequest past the per-call caps."""
        from guardforge.guard.moderation import measure_inputs

        limits, server = self.settings.limits, self.settings.server
        parts, chars = measure_inputs(inputs, limits.max_moderation_inputs, limits.max_moderation_chars)
        return max(1, math.ceil(parts / server.moderation_parts_per_token),
                   math.ceil(chars / server.moderation_chars_per_token))

    def moderate(self, inputs, charge: Charge | None = None) -> dict:
        """OpenAI moderation-schema answer for text and images (data URLs), within the caps of settings.limits."""
        cost = self.moderation_cost(inputs)
        if charge is not None:
            charge(cost)
        return self.guard.moderate(inputs, self.settings.limits.max_image_pixels)

    def generate(
        self,
        request: GenerationRequest,
        on_progress: ProgressCallback | None = None,
        cancel: Event | None = None,
        save: bool = True,
        skip: Event | None = None,
        interrupt: Event | None = None,
        device: str | None = None,
        replica: int = 0,
        previews: bool = False,
    ) -> GenerationResult:
        """Guard the inputs, run the engine, guard every output, save what the policy lets through.

        `cancel` stops between two steps with nothing delivered; `skip` and `interrupt` are A1111's: they end
        the current batch early (and, for interrupt, the request) and deliver what was made. `device` (None:
        settings.device) and `replica` pick the copy of the model to run on: each worker has its own.
        `previews`: progress events carry a latent preview every jobs.preview_every_steps, screened as outputs are.
        """
        from guardforge.engine.infotext import build_infotext
        from guardforge.engine.embeddings import ti_hashes
        from guardforge.engine.pipelines import request_seeds
        from guardforge.engine.prompt_schedule import guarded_pairs
        from guardforge.engine.variation import request_subseeds, with_fixed_subseed

        started = time.perf_counter()
        scripts = self.scripts.plan(request)
        if scripts.runner is not None:
            return self._run_script(scripts, request, on_progress=on_progress, cancel=cancel, save=save, skip=skip,
                                    interrupt=interrupt, device=device, replica=replica)
        request = scripts.alter(request)  # before the guard: it reads what the scripts made of the request
        request.check_limits(self.settings.limits)
        max_pixels = self.settings.limits.max_image_pixels
        init_image = (decode_image(request.init_image, max_pixels, "init_image")
                      if request.init_image is not None else None)
        if request.outpaint is not None and init_image is not None:  # before any guard call or model load
            from guardforge.engine.outpaint import check_canvas

            check_canvas(request, init_image.size, self.settings.limits)
        mask = decode_image(request.mask, max_pixels, "mask") if request.mask is not None else None
        entry = self.registry.resolve(request.model or self.settings.default_model)
        # Resolved before the guard runs, so that a VAE that is not there costs no guard call (the CLI's path).
        vae = self.usable_vae(request.vae) if request.vae is not None else None
        refiner = self.usable_refiner(request, entry)

        controls = None
        if request.controlnet:
            request, controls = self._prepare_controls(request, entry, init_image, mask)
        ip_adapter = None
        if request.ip_adapter is not None:
            from guardforge.engine.ip_adapter import prepare_ip_adapter

            ip_adapter = prepare_ip_adapter(self.registry, self.settings, request.ip_adapter, entry, max_pixels)

        request, expansions = self._expanded(request)
        # Each image's own texts: a style's or a wildcard's words are read by the guard as typed ones are.
        distinct = {request_texts(expansion.request): expansion.request for expansion in expansions}
        readings = []
        for texts, expanded in distinct.items():
            readings.append(prompt_reading(texts.prompt, texts.negative_prompt))
            if texts.hires_prompt is not None:  # the second pass encodes these: the guard reads them as the first's
                readings.append(prompt_reading(texts.hires_prompt, texts.hires_negative_prompt))
            # Prompt editing and alternation: each (prompt, negative prompt) a denoising step reads, as typed ones.
            readings += [prompt_reading(*pair) for pair in guarded_pairs(expanded, entry)]
        readings += [prompt_reading(text) for text in scripts.texts()]  # text a script writes into the images
        prompt_verdict = max(self.guard.check_prompts(readings), key=lambda verdict: SEVERITY[verdict.action])
        input_verdict = self.guard.check_input_image(init_image) if init_image is not None else None
        # The IP-Adapter image is an input image as a control image is: the guard reads it before anything runs.
        guarded = (controls.guarded if controls else []) + (ip_adapter.guarded if ip_adapter else [])
        control_verdicts = self.guard.check_images(guarded, "input_image") if guarded else []
        blocking = [v for v in (prompt_verdict, input_verdict, *control_verdicts)
                    if v is not None and v.action == "block"]
        if blocking:
            return GenerationResult(
                request=request, images=[], seeds=[], model=entry.name, model_hash=entry.short_hash_if_known,
                vae=vae.filename if vae else None, vae_hash=vae.short_hash_if_known if vae else None,
                elapsed_s=time.perf_counter() - started, prompt_verdict=blocking[0], blocked=True,
            )

        for expanded in distinct.values():  # what the engine would refuse later, refused before any model loads
            self.engine.check(expanded)
        # request.memory: per-request overrides of settings.memory
        loaded = self.pipelines.get(entry.name, memory=request.memory, vae=vae.name if vae else None,
                                    device=device, replica=replica)
        # A subseed of -1 is drawn here, so that the one used is reported and written in each image's infotext.
        fixed = with_fixed_subseed(request)
        subseeds = request_subseeds(fixed)
        control = controls.run(self.pipelines.controlnets, loaded) if controls else None
        # Both models stay loaded while the request runs (the refiner takes the base's latents on the same device).
        refined = (self.pipelines.get(refiner.name, memory=request.memory, device=device, replica=replica)
                   if refiner is not None else None)
        inputs = dict(init_image=init_image, mask=mask, on_progress=on_progress, cancel=cancel, skip=skip,
                      interrupt=interrupt, control=control, refiner=refined,
                      previews=self._previews(entry.family) if previews and on_progress else None,
                      ip_adapter=ip_adapter.run(self.pipelines.ip_encoders, loaded,
                                                self.settings) if ip_adapter else None)
        if len(distinct) == 1:
            outputs = self.engine.run(loaded, expansions[0].request.model_copy(update={"subseed": fixed.subseed}),
                                      **inputs)
        else:
            from guardforge.engine.per_image import run_per_image

            one = {"batch_size": 1, "n_iter": 1}
            outputs = run_per_image(self.engine, loaded, [
                expansion.request.model_copy(update={**one, "seed": seed, "subseed": subseed})
                for expansion, seed, subseed in zip(expansions, request_seeds(fixed), subseeds, strict=True)],
                request.batch_size, **inputs)
        model_hash = entry.short_hash()
        vae_name, vae_hash = (vae.filename, vae.short_hash()) if vae else (None, None)
        refiner_title = (refiner.name, refiner.short_hash()) if refiner else None
        known: dict[tuple[str, str], str | None] = {}

        def inversions(used: GenerationRequest) -> str | None:  # the embeddings each image's own texts name
            texts = (used.prompt, used.negative_prompt)
            if texts not in known:
                known[texts] = ti_hashes(self.registry, *texts)
            return known[texts]

        unit_lines = (controls.infotext() if controls else []) + ([ip_adapter.infotext()] if ip_adapter else [])
        if scripts.bound:  # before the output guard, which screens the images as the scripts left them
            outputs = list(zip(scripts.process([image for image, _ in outputs], request),
                               [seed for _, seed in outputs], strict=True))
        script_params = scripts.infotext()
        verdicts = self.guard.check_output_images([image for image, _ in outputs])
        images: list[GeneratedImage] = []
        # A1111's Size is the first pass's: hires fix's own keys say what it was upscaled to.
        first_size = self.engine.size_for(loaded, request) if request.hires is not None else None
        for index, ((image, seed), verdict) in enumerate(zip(outputs, verdicts, strict=True)):
            subseed = subseeds[index] if request.subseed_strength > 0 else None
            width, height = first_size or image.size
            # What this image read: its styled, expanded texts, and the template they came from.
            used = expansions[index]
            infotext = build_infotext(used.request, seed=seed, width=width, height=height,
                                      model_name=entry.name, model_hash=model_hash, vae_name=vae_name,
                                      vae_hash=vae_hash, subseed=subseed, ti_hashes=inversions(used.request),
                                      controlnet_units=unit_lines, refiner=refiner_title,
                                      extra=used.infotext_params(), script_params=script_params)
            delivered = self.guard.enforce(image, verdict)
            path = None
            if delivered is not None and save:
                path = str(self.store.save(delivered, infotext, verdict.model_dump(), request.mode, seed))
            images.append(GeneratedImage(
                image_id=self.store.new_id(), seed=seed, subseed=subseed, infotext=infotext, width=image.width,
                height=image.height, path=path, verdict=verdict, action=verdict.action,
                pil=delivered,
            ))
        return GenerationResult(
            request=request, images=images, seeds=[seed for _, seed in outputs],
            subseeds=subseeds[:len(outputs)], model=entry.name,
            model_hash=model_hash, vae=vae_name, vae_hash=vae_hash, elapsed_s=time.perf_counter() - started,
            prompt_verdict=prompt_verdict, device=str(loaded.device),
        )

    def _previews(self, family: str):
        """Live previews for a job on a model of `family`, each passed through the output-image guard first:
        a preview is an image leaving the server like any other."""
        from guardforge.engine.preview import Previews

        def screen(image):
            return self.guard.enforce(image, self.guard.check_output_images([image])[0])

        return Previews(self.settings.jobs.preview_every_steps, family, screen)

    # -- the X/Y/Z plot: one job whose cells are generations ----------------------------------------------
    def submit_grid(self, grid, caller: Caller = LOCAL, priority: int = 0, save: bool = True) -> Job:
        """Check every cell as submit checks a request (so a bad value fails at the door), fix the seeds, then
        queue the grid as one `grid` job. A grid costs one request of the caller's rate limit: its cells are
        capped by limits.max_grid_cells, and it holds one of the caller's active-job places."""
        from guardforge.engine.xyz import fix_seeds, plan_grid

        caller.check_priority(priority)
        plan = plan_grid(grid)
        self._check_grid_limits(plan)
        caller.spend(1)
        for cell in plan.cells:
            self.check_request(cell.request)
        grid = fix_seeds(grid)
        job_id = self.jobs.submit("grid", {"request": grid.model_dump(mode="json"), "save": save},
                                  owner=caller.owner, priority=priority, max_active_for_owner=caller.max_active)
        self.workers.notify()
        return self.jobs.get(job_id, caller.owner)

    def generate_grid(self, grid, on_progress: ProgressCallback | None = None, cancel: Event | None = None,
                      save: bool = True, skip: Event | None = None, interrupt: Event | None = None,
                      device: str | None = None, replica: int = 0):
        """An X/Y/Z plot (engine/xyz.py): each cell generated as `generate` does (guarded, saved), then the
        labelled grid image with the first cell's infotext and the axes, saved to the outputs' *-grids folder.
        A blocked cell shows as the withheld tile; `cancel`, `skip` and `interrupt` act as in run_cells."""
        from guardforge.engine.xyz import GridResult, fix_seeds, plan_grid, run_grid

        started = time.perf_counter()
        grid = fix_seeds(grid)
        plan = plan_grid(grid)
        self._check_grid_limits(plan)
        made = run_grid(grid, plan, lambda request, **signals: self.generate(request, save=save, device=device,
                                                                             replica=replica, **signals),
                        self._made_size, on_progress, cancel, skip, interrupt)
        cells, infotext = made.cells, made.infotext
        # The grid holds only delivered pixels (blurred ones blurred, blocked ones as the tile): flagged when
        # any cell was not allowed as it was made, so that a reader knows to look at the cells' verdicts.
        actions = [image.action for cell in cells if cell.result for image in cell.result.images]
        blocked = sum(cell.result is not None and cell.result.blocked for cell in cells)
        action = "allow" if not blocked and all(a == "allow" for a in actions) else "flag"
        seed = next((cell.result.seeds[0] for cell in cells if cell.result and cell.result.seeds),
                    grid.request.seed)
        mode = "img2img-grids" if grid.request.init_image is not None else "txt2img-grids"
        grids = []
        for picture in made.pictures:
            path = None
            if save:
                path = str(self.store.save(picture, infotext, {"grid": True, "cell_actions": actions,
                                                               "cells_blocked_before_generation": blocked},
                                           mode, seed))
            grids.append(GeneratedImage(image_id=self.store.new_id(), seed=seed, infotext=infotext,
                                        width=picture.width, height=picture.height, path=path, action=action,
                                        pil=picture))
        devices = [cell.result.device for cell in cells if cell.result and cell.result.device]
        return GridResult(grid=grid, grids=grids, cells=cells, labels=plan.labels,
                          elapsed_s=time.perf_counter() - started,
                          interrupted=bool(interrupt is not None and interrupt.is_set()),
                          device=devices[0] if devices else None)

    def _check_grid_limits(self, plan) -> None:
        """A grid's cells against limits.max_grid_cells, its image's pixels against limits.max_grid_pixels, and
        each cell's request against the request limits; and its scripts (one that runs several generations would
        make each cell a grid of its own)."""
        runner = self.scripts.plan(plan.cells[0].request).runner
        if runner is not None:
            raise InvalidRequest(f"a grid's cell is one generation: its request cannot name the script "
                                 f"{runner.script.name!r}, which runs several")
        nx, ny, nz = plan.shape
        self._check_run_limits([cell.request for cell in plan.cells],
                               f"the grid has {len(plan.cells)} cells ({nx} x {ny} x {nz})")

    def _check_run_limits(self, requests: list[GenerationRequest], described: str) -> None:
        """Generations one job makes (a grid's cells, a selectable script's run) against limits.max_grid_cells,
        the image laid out of them against limits.max_grid_pixels, each against the request limits."""
        limits = self.settings.limits
        if len(requests) > limits.max_grid_cells:
            raise InvalidRequest(f"{described}, over this server's limit of {limits.max_grid_cells}")
        pixels = 0
        for request in requests:
            request.check_limits(limits)
            width, height = self._made_size(request)
            pixels += width * height
        if pixels > limits.max_grid_pixels:
            raise InvalidRequest(f"the grid image would have {pixels / 1e6:.0f} megapixels, over this server's "
                                 f"limit of {limits.max_grid_pixels / 1e6:.0f}")

    def _made_size(self, request: GenerationRequest) -> tuple[int, int]:
        """The size a request's image comes out at, known without running it (an outpainted one: its request
        size, the canvas being the image's)."""
        from guardforge.engine.hires import hires_sizes

        width, height = request.width, request.height
        if not (width and height):
            native = self.native_size(request.model)
            width, height = width or native[0], height or native[1]
        if request.hires is not None:
            width, height = hires_sizes(width, height, request.hires)[1]
        return width, height

    def scripts_installed(self) -> list:
        """The installed scripts (guardforge.scripts.Script), the always-on ones first, each group by name."""
        return list(self.scripts)

    def script_routers(self) -> list:
        """(name, FastAPI router) of each installed script that serves routes of its own."""
        return self.scripts.routers()

    def _without_runner(self, scripts, request: GenerationRequest) -> GenerationRequest:
        """The request a selectable script's `run` gets: its scripts but the runner (the always-on ones run in
        each generation the run asks for)."""
        runner = scripts.runner
        return request.model_copy(update={"scripts": {name: args for name, args in request.scripts.items()
                                                      if self.scripts.find(name) is not runner.script}})

    def _planned_run(self, scripts, request: GenerationRequest) -> list[GenerationRequest]:
        """The generations a selectable script's run says it will make (Script.planned), held to the limits of
        a grid's cells; none where it does not say or there is no run."""
        runner = scripts.runner
        if runner is None:
            return []
        planned = runner.script.planned(self._without_runner(scripts, request), runner.args)
        if planned is None:
            return []
        self._check_run_limits(list(planned), f"script {runner.script.name!r} would make {len(planned)} images")
        return list(planned)

    def _run_script(self, scripts, request: GenerationRequest, save: bool = True, on_progress=None, cancel=None,
                    skip=None, interrupt=None, **run_options) -> GenerationResult:
        """A selectable script's `run`: the generations it asks for, each through generate with the always-on
        scripts but not itself, then the images it made from them screened and stored as any output is."""
        from guardforge.scripts import Generate

        started = time.perf_counter()
        runner = scripts.runner
        self._planned_run(scripts, request)  # the limits hold for a run not queued (the CLI's) too
        inner_request = self._without_runner(scripts, request)
        others = inner_request.scripts
        # Text the script will paint into what it makes (a grid's labels): read before anything is generated. The
        # always-on scripts' texts are read by each generation it asks for.
        labels = runner.script.texts(runner.args)
        if labels:
            verdict = max(self.guard.check_prompts([prompt_reading(text) for text in labels]),
                          key=lambda v: SEVERITY[v.action])
            if verdict.action == "block":
                return GenerationResult(request=request, images=[], seeds=[],
                                        model=request.model or self.settings.default_model, model_hash=None,
                                        elapsed_s=time.perf_counter() - started, prompt_verdict=verdict,
                                        blocked=True)

        def generate(inner: GenerationRequest, **signals) -> GenerationResult:
            return self.generate(inner.model_copy(update={"scripts": others}), save=save, **signals, **run_options)

        run = runner.script.run(inner_request, runner.args, Generate(generate, self._made_size, on_progress, cancel,
                                                                     skip, interrupt))
        made, results = list(run.made), list(run.results)
        first = results[0] if results else None
        # A made image (a grid) is filed under the first generation's seed, as A1111 files its grids.
        seed = first.seeds[0] if first and first.seeds else request.seed
        verdicts = self.guard.check_output_images([m.image for m in made]) if made else []
        images: list[GeneratedImage] = []
        for item, verdict in zip(made, verdicts, strict=True):
            delivered = self.guard.enforce(item.image, verdict)
            path = None
            if delivered is not None and save:
                grids = ("img2img" if request.init_image is not None else "txt2img") + "-grids"
                path = str(self.store.save(delivered, item.infotext, verdict.model_dump(),
                                           grids if item.grid else request.mode, seed))
            images.append(GeneratedImage(image_id=self.store.new_id(), seed=seed, infotext=item.infotext,
                                         width=item.image.width, height=item.image.height, path=path,
                                         verdict=verdict, action=verdict.action, pil=delivered))
        images += [image for result in results for image in result.images]
        verdicts = [r.prompt_verdict for r in results if r.prompt_verdict is not None]
        return GenerationResult(
            request=request, images=images, seeds=[image.seed for image in images],
            subseeds=[s for result in results for s in result.subseeds],
            model=first.model if first else (request.model or self.settings.default_model),
            model_hash=first.model_hash if first else None, vae=first.vae if first else None,
            vae_hash=first.vae_hash if first else None, elapsed_s=time.perf_counter() - started,
            prompt_verdict=max(verdicts, key=lambda v: SEVERITY[v.action]) if verdicts else None,
            blocked=bool(results) and all(result.blocked for result in results),
            device=first.device if first else None)

    def upscalers_listed(self) -> list:
        """The upscalers (UpscalerInfo): "None", "Lanczos", "Nearest", then the ESRGAN/ and RealESRGAN/ models."""
        return self.upscalers.listed()

    def upscale(self, request: UpscaleRequest, caller: Caller = LOCAL, device: str | None = None,
                cancel: Event | None = None) -> UpscaleResult:
        """A1111's extras upscale of one image: checked (names, sizes against limits.max_image_pixels) before
        anything runs, the input guarded as an input image, the result as an output image (the policy's blur or
        block applied to what is returned). Runs in the calling thread: interfaces call it off their event loop."""
        from guardforge.models.devices import pick_device
        from guardforge.storage.outputs import infotext_of

        started = time.perf_counter()
        max_pixels = self.settings.limits.max_image_pixels
        image = decode_image(request.image, max_pixels, "image")
        size, info = self.upscalers.plan(request, image.size, max_pixels)
        caller.spend(1)
        input_verdict = self.guard.check_input_image(image)
        if input_verdict.action == "block":
            return UpscaleResult(width=size[0], height=size[1], upscaler=request.upscaler, info=info,
                                 input_verdict=input_verdict, action="block", blocked=True,
                                 elapsed_s=time.perf_counter() - started)
        target = pick_device(device or self.settings.device)
        upscaled = self.upscalers.run(request, image, target, cancel)
        [verdict] = self.guard.check_output_images([upscaled])
        return UpscaleResult(width=upscaled.width, height=upscaled.height, upscaler=request.upscaler, info=info,
                             input_verdict=input_verdict, verdict=verdict, action=verdict.action,
                             elapsed_s=time.perf_counter() - started, device=str(target),
                             infotext=infotext_of(image), pil=self.guard.enforce(upscaled, verdict))

    def controlnet_modules(self) -> list:
        """The ControlNet preprocessors: the ones that run here, then the ones that cannot, each with its reason."""
        from guardforge.engine.controlnet_preprocessors import PREPROCESSORS

        return sorted(PREPROCESSORS.values(), key=lambda p: (not p.available, p.name != "none", p.name))

    def detect_control(self, images: list[str], module: str, processor_res: int = 512,
                       threshold_a: float | None = None, threshold_b: float | None = None,
                       masks: list[str | None] | None = None, seed: int = 0) -> list:
        """sd-webui-controlnet's /detect: each image (base64) through a preprocessor. An input image is guarded as
        a generation's is, and the map made from it as an output is (it leaves the server): a blocked one comes
        back as None with its verdict, a blurred one blurred."""
        from guardforge.engine.controlnet_inputs import DetectedControl
        from guardforge.engine.controlnet_preprocessors import detect, preprocessor

        preprocessor(module)  # an unknown or unavailable module: refused before any image is decoded
        max_pixels = self.settings.limits.max_image_pixels
        decoded = [decode_image(image, max_pixels, f"images[{index}]") for index, image in enumerate(images)]
        masks = list(masks or []) + [None] * (len(decoded) - len(masks or []))
        mask_images = [decode_image(m, max_pixels, f"masks[{i}]") if m else None for i, m in enumerate(masks)]
        results: list = [None] * len(decoded)
        allowed = []
        for index, verdict in enumerate(self.guard.check_images(decoded, "input_image") if decoded else []):
            if verdict.action == "block":
                results[index] = DetectedControl(None, verdict)
            else:
                allowed.append(index)
        maps = [detect(decoded[i], module, processor_res, threshold_a, threshold_b, seed=seed,
                       mask=mask_images[i]).image for i in allowed]
        for index, image, verdict in zip(allowed, maps, self.guard.check_output_images(maps) if maps else [],
                                         strict=True):
            results[index] = DetectedControl(self.guard.enforce(image, verdict), verdict)
        return results

    def _expanded(self, request: GenerationRequest) -> tuple[GenerationRequest, list]:
        """(the request, one prompt_templates.Expansion per image). A request whose texts are dynamic gets its
        random seed drawn here, since each image's seed picks its expansion and the infotext must name that seed."""
        from guardforge.engine.pipelines import request_seeds

        styles = self.prompt_styles() if request.styles else {}
        if request.seed == -1 and prompt_templates.is_dynamic(prompt_templates.styled(request, styles)):
            request = request.model_copy(update={"seed": request_seeds(request)[0]})
        return request, prompt_templates.expand(request, request_seeds(request), styles, self.wildcards())

    def _prepare_controls(self, request: GenerationRequest, entry, init_image, mask):
        """The request's ControlNet units decoded, resolved and preprocessed at the output size, before the guard
        and before any model loads. A request with a random seed gets its seed drawn here, so that a seeded
        module (shuffle) and the infotext agree."""
        from guardforge.engine.controlnet_inputs import ControlInputs
        from guardforge.engine.pipelines import request_seeds

        if request.seed == -1:
            request = request.model_copy(update={"seed": request_seeds(request)[0]})
        max_pixels = self.settings.limits.max_image_pixels
        images = [decode_image(unit.image, max_pixels, f"controlnet[{index}].image") if unit.image else None
                  for index, unit in enumerate(request.controlnet)]
        entries = [self.usable_controlnet(unit.model, entry) for unit in request.controlnet]
        width, height = self.native_size(entry.name)
        size = (request.width or width, request.height or height)
        return request, ControlInputs.prepare(request, images, entries, init_image, mask, size)

    def native_size(self, model: str | None = None) -> tuple[int, int]:
        """(width, height) a request for `model` that names no size is made at, read from the model's config
        files: nothing is loaded."""
        from guardforge.engine.pipelines import native_size_from_configs
        from guardforge.models.loading import CONFIGS_DIR, shipped_config_name

        entry = self.registry.resolve(model or self.settings.default_model)
        folder = entry.path if entry.format == "diffusers" else CONFIGS_DIR / shipped_config_name(entry.family)
        return native_size_from_configs(folder)

    def model_defaults(self, model: str | None = None):
        """The form a model starts from (models.defaults.ModelDefaults): its native size, its family's sampler,
        steps and CFG scale. Nothing is loaded; a size its configs cannot give is left out."""
        from guardforge.models.defaults import defaults_for

        entry = self.registry.resolve(model or self.settings.default_model)
        try:
            size = self.native_size(entry.name)
        except Exception:  # a single file of an unknown family, unreadable configs: no size to offer
            size = None
        return defaults_for(entry.family, size)

    @cached_property
    def preferences(self):
        from guardforge.storage.preferences import PreferenceStore

        return PreferenceStore(self.database)

    def remember_settings(self, caller: Caller, settings) -> None:
        """Keep the caller's last form settings (storage.preferences.RememberedSettings) for their next visit."""
        self.preferences.save(caller.owner, settings)

    def remembered_settings(self, caller: Caller):
        """The caller's last form settings, or None."""
        return self.preferences.load(caller.owner)

    def _text_widths(self, entry) -> dict[str, int]:
        from guardforge.engine.embeddings import widths_from_configs
        from guardforge.models.loading import CONFIGS_DIR, shipped_config_name

        folder = entry.path if entry.format == "diffusers" else CONFIGS_DIR / shipped_config_name(entry.family)
        return widths_from_configs(folder)

    def _check_model_fit(self, request: GenerationRequest, checkpoint) -> None:
        """What would fail the generation on this checkpoint, refused now: an embedding the texts name that was made
        for another family, variation seeds on a model without a UNet."""
        from guardforge.engine.embeddings import check_fit, embeddings_in
        from guardforge.engine.prompt_schedule import guarded_pairs
        from guardforge.engine.prompts import extract_lora_tags
        from guardforge.engine.variation import check_family

        check_family(request, checkpoint.family)
        guarded_pairs(request, checkpoint)  # prompt editing this model cannot run, a scheduled text that fails
        used = embeddings_in(self.registry, extract_lora_tags(request.prompt)[0], request.negative_prompt)
        if used:
            check_fit(used, self._text_widths(checkpoint), self.settings.allow_pickle)

    def embeddings(self, model: str | None = None) -> dict[str, dict]:
        """The textual inversion embeddings in the models folder's embeddings/, in A1111's shape: "loaded" those
        that fit `model`'s text encoders (read from its config files: nothing is loaded), "skipped" the rest."""
        from guardforge.engine.embeddings import listing

        entry = self.registry.resolve(model or self.settings.default_model)
        return listing(self.models("embedding"), self._text_widths(entry), self.settings.allow_pickle)

    def dreambooth_services(self, device: str | None = None, replica: int = 0):
        """What DreamBooth training may ask of this studio (train sits below it and gets only these).
        `device` and `replica` pick the model copy (a worker's own) that makes the class images."""
        from guardforge.train.dreambooth.services import DreamBoothServices

        return DreamBoothServices.from_parts(registry=self.registry, pipelines=self.pipelines, guard=self.guard,
                                             generate=self.generate, models_dir=self.settings.resolved_models_dir,
                                             device=device, replica=replica)

    def train_dreambooth(self, config, progress=None, cancel: Event | None = None, resume=None,
                         overwrite_exports: bool = True, device: str | None = None, replica: int = 0):
        """DreamBooth (full or LoRA): guard the data, make class images, train, export into the models folder.

        `device` and `replica` pick the model copy that makes the class images (a worker's own); where the
        training itself runs is the config's accelerator and devices."""
        from guardforge.train.dreambooth.run import TrainingCancelled, train_dreambooth

        mirror = self.run_mirror
        if mirror is not None and str(resume) == "latest":
            mirror.pull_checkpoints(config.output_dir)
        try:
            result = train_dreambooth(self.dreambooth_services(device, replica), config, progress=progress,
                                      cancel=cancel, resume=resume, overwrite_exports=overwrite_exports)
        except TrainingCancelled:  # its checkpoint is what a resume elsewhere needs
            if mirror is not None:
                mirror.push(config.output_dir)
            raise
        if mirror is not None:
            mirror.push(config.output_dir)
        return result

    @cached_property
    def run_mirror(self):
        """Where DreamBooth run folders are copied (storage.training_url), or None: they stay on this node."""
        from guardforge.storage.runs import RunMirror

        storage = self.settings.storage
        if not storage.training_url:
            return None
        return RunMirror(storage.training_url, storage.options, self.settings.resolved_training_runs_dir)

    # -- DreamBooth as a queued job (a config from a remote caller) -------------------------------------
    def confine_dreambooth(self, config, owner: str, resume: bool = False, device: str | None = None):
        """The config with its paths checked and made absolute (see train/dreambooth/remote.py), its base model
        found, its class-image generation within the limits; InvalidRequest (or ModelNotFound) says why not."""
        from pydantic import ValidationError

        from guardforge.dependencies import require_lora_support
        from guardforge.engine.request import GenerationRequest
        from guardforge.train.dreambooth.data import list_images
        from guardforge.train.dreambooth.remote import check_export_name, confine

        if config.mode == "lora":
            require_lora_support()
        limits = self.settings.training
        confined = confine(config, owner=owner, data_dir=self.settings.resolved_training_data_dir,
                           runs_dir=self.settings.resolved_training_runs_dir, max_steps=limits.max_steps,
                           max_resolution=limits.max_resolution, max_class_images=limits.max_class_images,
                           device=device or self.settings.device)
        # Loaded by the worker as a generation's model is: a pickle is refused now, not in the worker.
        check_checkpoint(self.registry.resolve(confined.base_model), self.settings)
        # The caller's own spelling in messages: the server's folders are not the caller's business.
        if not confined.instance_data_dir.is_dir() or not list_images(confined.instance_data_dir):
            raise InvalidRequest(f"instance_data_dir {str(config.instance_data_dir)!r} is not a folder of images "
                                 "(.png, .jpg, .jpeg, .webp, .bmp) in the training-data folder")
        if confined.with_prior_preservation:  # class images are generations: the same checks as any request
            options = confined.class_images
            try:
                request = GenerationRequest(
                    prompt=confined.class_prompt, negative_prompt=options.negative_prompt, model=confined.base_model,
                    sampler=options.sampler, steps=options.steps, cfg_scale=options.cfg_scale,
                    width=confined.resolution, height=confined.resolution)
            except ValidationError as exc:
                raise InvalidRequest(f"class_images: {exc.errors()[0]['msg']}") from None
            try:
                request.check_limits(self.settings.limits)
            except InvalidRequest as exc:
                raise InvalidRequest(f"class_images: {exc}") from None
        if confined.validation_prompts and confined.validation_steps > self.settings.limits.max_steps:
            raise InvalidRequest(f"validation_steps={confined.validation_steps} is over this server's limit of "
                                 f"{self.settings.limits.max_steps}")
        if resume and not any((confined.output_dir / "checkpoints").glob("*.ckpt")) and not (
                self.run_mirror and self.run_mirror.has_checkpoints(confined.output_dir)):
            raise InvalidRequest(f"resume: output_dir {str(config.output_dir)!r} holds no checkpoint yet")
        check_export_name(confined, self.settings.resolved_models_dir)
        name = confined.resolved_export_name
        # A user model shadows a shipped one of the same name: an export must not replace, say, the default model.
        known = set(self.registry.names()) & {name, f"{name}-diffusers"}
        if known:
            raise InvalidRequest(f"export_name {name!r} is taken (the registry lists {', '.join(sorted(known))}); "
                                 "choose another export_name")
        return confined

    def submit_dreambooth(self, config, caller: Caller = LOCAL, priority: int = 0, resume: bool = False) -> Job:
        """Check the config now (the caller's caps, paths, model, limits, export name), then queue it as a
        `dreambooth` job. The caller's rate limit is spent before the checks that read folders."""
        caller.check_priority(priority)
        caller.spend(1)
        owner = caller.owner
        # Checked for each device a worker could run it on, so that a config one of them cannot train
        # (16-mixed with a CPU worker) is refused now with a 4xx, not failed later on that worker.
        for device in dict.fromkeys(worker.device for worker in self.workers.workers):
            confined = self.confine_dreambooth(config, owner, resume, device=device)
        name, output_dir = confined.resolved_export_name, str(confined.output_dir)
        active = self.jobs.active(kind="dreambooth")
        if any(job.payload.get("export_name") == name for job in active):
            raise InvalidRequest(f"export_name {name!r} is taken by a training job that is queued or running; "
                                 "choose another export_name")
        if any(job.payload.get("output_dir") == output_dir for job in active):  # two runs, one checkpoint folder
            raise InvalidRequest(f"output_dir {str(config.output_dir)!r} is in use by a training job that is queued "
                                 "or running; choose another output_dir")
        job_id = self.jobs.submit("dreambooth", {"request": config.model_dump(mode="json"), "resume": resume,
                                                 "export_name": name, "output_dir": output_dir},
                                  owner=owner, priority=priority, max_active_for_owner=caller.max_active)
        self.workers.notify()
        return self.jobs.get(job_id, owner)

    def run_dreambooth_job(self, config, owner: str, resume: bool = False, progress=None,
                           cancel: Event | None = None, device: str | None = None, replica: int = 0):
        """What a worker runs for a `dreambooth` job: confine again (folders may have changed since the
        submit), train, export without replacing any model. A cancel stops after the current step with a
        checkpoint saved; the Cancelled it raises says where and how to resume."""
        from guardforge.errors import Cancelled
        from guardforge.train.dreambooth.run import TrainingCancelled

        confined = self.confine_dreambooth(config, owner, resume, device=device)
        try:
            return self.train_dreambooth(confined, progress=progress, cancel=cancel,
                                         resume="latest" if resume else None, overwrite_exports=False,
                                         device=device, replica=replica)
        except TrainingCancelled as exc:
            raise Cancelled(f"stopped after step {exc.step}/{exc.total}; a checkpoint was saved: submit the same "
                            "config again with resume to continue from it") from exc
