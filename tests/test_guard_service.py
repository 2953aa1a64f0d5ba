"""Guard: checkpoints, fail modes (error and timeout), lazy loading, audit rows, enforce, blur, moderation."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from guardforge.db import Database
from guardforge.guard.audit import AuditLog
from guardforge.guard.backends.base import ImageBackend, Scores, TextBackend
from guardforge.guard.blur import strong_blur
from guardforge.guard.moderation import CATEGORY_ORDER
from guardforge.guard.policy import Policy, load_policy
from guardforge.guard.service import Guard, image_sha256, text_sha256
from guardforge.guard.taxonomy import HAZARD_CODES
from tests.test_queue import db_url, new_postgres_database  # noqa: F401  (fixture: SQLite and PostgreSQL)

RED, BLUE = (255, 0, 0), (0, 0, 255)


class FixedScores:
    """A test double of an external guard model: fixed scores per text, or per image colour."""

    name = "fixed"
    categories = frozenset(HAZARD_CODES)

    def __init__(self, table: dict, delay_s: float = 0.0, error: Exception | None = None):
        self.table, self.delay_s, self.error, self.calls = table, delay_s, error, []

    def _answer(self, key) -> Scores:
        return Scores(scores=dict(self.table.get(key, {})), unsafe=max(self.table.get(key, {"": 0.0}).values()))

    def score_texts(self, texts):
        self.calls.append(list(texts))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error:
            raise self.error
        return [self._answer(text) for text in texts]

    def score_images(self, images):
        self.calls.append(len(images))
        if self.error:
            raise self.error
        return [self._answer(image.getpixel((0, 0))) for image in images]


TABLE = {"a knife attack": {"S1": 0.9, "S12": 0.1}, "a tree": {"S1": 0.01}, "nude": {"S12": 0.8},
         RED: {"S12": 0.95}, BLUE: {"S1": 0.02}}


MAX_PIXELS = 4096 * 4096

def _guard(tmp_path, policy="default", backend=None, **kwargs) -> Guard:
    backend = backend or FixedScores(TABLE)
    return Guard(load_policy(policy) if isinstance(policy, str) else policy, text_backend=backend,
                 image_backend=backend, audit=AuditLog(Database(f"sqlite:///{tmp_path / 'audit.db'}")),
                 **kwargs)


def test_double_implements_the_protocols():
    assert isinstance(FixedScores({}), TextBackend) and isinstance(FixedScores({}), ImageBackend)


def test_prompt_verdict_and_audit_row(tmp_path):
    guard = _guard(tmp_path)
    verdict = guard.check_prompt("a knife attack")
    assert verdict.action == "block" and verdict.violated == ["S1"] and verdict.backend == "fixed"
    assert verdict.checkpoint == "prompt" and verdict.content_sha256 == text_sha256("a knife attack")
    assert verdict.policy_hash == load_policy("default").hash and verdict.error is None
    assert guard.check_prompt("a tree").action == "allow"
    # A second Database on the same file: the rows are on disk.
    rows = AuditLog(Database(f"sqlite:///{tmp_path / 'audit.db'}")).recent(5)
    assert [row["action"] for row in rows] == ["allow", "block"]
    assert rows[1]["scores"] == {"S1": 0.9, "S12": 0.1} and rows[1]["violated"] == ["S1"]
    assert rows[1]["content"] is None and rows[1]["content_sha256"] == text_sha256("a knife attack")


def test_audit_stores_content_only_when_configured(tmp_path):
    guard = _guard(tmp_path, store_content=True)
    guard.check_prompt("a tree")
    [image_verdict] = guard.check_output_images([Image.new("RGB", (16, 16), BLUE)])
    rows = guard.audit.recent(2)
    assert rows[1]["content"] == b"a tree"
    assert Image.open(io.BytesIO(rows[0]["content"])).getpixel((0, 0)) == BLUE
    assert rows[0]["content_sha256"] == image_verdict.content_sha256 == image_sha256(Image.new("RGB", (16, 16), BLUE))


def test_output_images_batched_blur_and_enforce(tmp_path):
    backend = FixedScores(TABLE)
    guard = _guard(tmp_path, backend=backend)
    red, blue = Image.new("RGB", (32, 32), RED), Image.new("RGB", (32, 32), BLUE)
    verdicts = guard.check_output_images([red, blue])
    assert backend.calls == [2]  # one backend call for the batch
    assert [v.action for v in verdicts] == ["blur", "allow"]
    assert guard.enforce(blue, verdicts[1]) is blue
    blurred = guard.enforce(red, verdicts[0])
    assert blurred is not None and blurred.size == red.size
    assert guard.enforce(red, verdicts[0].model_copy(update={"action": "block"})) is None
    assert guard.check_input_image(red).action == "block"  # the default policy blocks S12 input images


@pytest.mark.parametrize("fail_mode, action", [("closed", "block"), ("open", "flag")])
def test_backend_error_applies_fail_mode(tmp_path, fail_mode, action):
    policy = load_policy("default").model_copy(update={"fail_mode": fail_mode})
    guard = _guard(tmp_path, policy=policy, backend=FixedScores(TABLE, error=RuntimeError("CUDA out of memory")))
    verdict = guard.check_prompt("a tree")
    assert verdict.action == action and "CUDA out of memory" in verdict.error
    assert guard.audit.recent(1)[0]["error"] == verdict.error


@pytest.mark.parametrize("fail_mode, action", [("closed", "block"), ("open", "flag")])
def test_timeout_applies_fail_mode(tmp_path, fail_mode, action):
    policy = load_policy("default").model_copy(update={"fail_mode": fail_mode})
    guard = _guard(tmp_path, policy=policy, backend=FixedScores(TABLE, delay_s=2.0), timeout_s=0.2)
    started = time.perf_counter()
    verdicts = guard.check_texts(["a tree", "nude"])
    assert time.perf_counter() - started < 1.5
    assert [v.action for v in verdicts] == [action, action]
    assert all("timed out after 0.2 s" in v.error for v in verdicts)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_score_that_is_not_a_number_fails_closed(tmp_path, bad):
    """NaN is below no threshold, so read as a score it would allow anything (a fp16 overflow in a guard
    model gives exactly that): it is a backend error, and the fail mode decides."""
    guard = _guard(tmp_path, backend=FixedScores({"x": {"S12": bad}}))
    verdict = guard.check_prompt("x")
    assert verdict.action == "block" and "not a finite number" in verdict.error
    assert guard.check_prompt("a tree").action == "allow"  # the same backend's good answers still count


def test_loading_failure_is_a_backend_error(tmp_path):
    def load():
        raise OSError("no weights in /models/lg4")

    guard = Guard(load_policy("default"), text_backend=load, audit=None)
    verdict = guard.check_prompt("a tree")
    assert verdict.action == "block" and "no weights" in verdict.error


def test_off_checkpoints_load_nothing_and_say_so(tmp_path):
    loads = []

    def load():
        loads.append(1)
        return FixedScores(TABLE)

    guard = Guard(load_policy("off"), text_backend=load, image_backend=load,
                  audit=AuditLog(Database(f"sqlite:///{tmp_path / 'a.db'}")))
    verdict = guard.check_prompt("a knife attack")
    [image_verdict] = guard.check_output_images([Image.new("RGB", (8, 8), RED)])
    assert (verdict.action, verdict.backend, image_verdict.backend) == ("allow", "off", "off")
    assert loads == [] and len(guard.audit.recent(10)) == 2


def test_backends_load_lazily_once(tmp_path):
    loads = []

    def load():
        loads.append(1)
        return FixedScores(TABLE)

    policy = Policy.model_validate({"checkpoints": {"prompt": False}})
    guard = Guard(policy, text_backend=load, image_backend=load, audit=None)
    assert loads == []
    guard.check_prompt("a knife attack")
    assert loads == []  # prompt checkpoint off: the text backend is never built
    guard.check_output_images([Image.new("RGB", (8, 8), BLUE)])
    guard.check_output_images([Image.new("RGB", (8, 8), BLUE)])
    assert loads == [1]


def test_training_data_images_then_prompts(tmp_path):
    guard = _guard(tmp_path)
    verdicts = guard.check_training_data([("a.png", Image.new("RGB", (8, 8), BLUE)),
                                          ("b.png", Image.new("RGB", (8, 8), RED))], ["a tree", "a knife attack"])
    assert [v.checkpoint for v in verdicts] == ["training_data"] * 4
    assert [v.action for v in verdicts] == ["allow", "block", "allow", "block"]


def _structured(size=256) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, size, 16):
        for y in range(0, size, 16):
            if (x // 16 + y // 16) % 2:
                draw.rectangle([x, y, x + 15, y + 15], fill="black")
    draw.ellipse([64, 64, 192, 192], fill=(200, 30, 30))
    draw.text((80, 120), "FACE ID 1234", fill="white")
    return image


def test_blur_leaves_nothing_recognisable():
    original = np.asarray(_structured().convert("L"), dtype=np.float64)
    blurred = np.asarray(strong_blur(_structured()).convert("L"), dtype=np.float64)
    # Fine structure (the image minus its coarse 8x8 layout) must be gone: no correlation with what is left.
    coarse = np.asarray(_structured().convert("L").resize((8, 8), Image.Resampling.BOX)
                        .resize((256, 256), Image.Resampling.BILINEAR), dtype=np.float64)
    detail = original - coarse
    assert abs(np.corrcoef(detail.ravel(), blurred.ravel())[0, 1]) < 0.1
    assert abs(np.corrcoef(original.ravel(), blurred.ravel())[0, 1]) < 0.5
    edges = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()
    assert edges(blurred) < 0.02 * edges(original)


def _data_url(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_moderation_schema(tmp_path):
    guard = _guard(tmp_path)
    single = guard.moderate("a knife attack", MAX_PIXELS)
    assert single["id"].startswith("modr-") and single["model"] == "guardforge-fixed"
    [result] = single["results"]
    assert result["flagged"] is True and list(result["categories"]) == list(CATEGORY_ORDER)
    assert result["categories"]["violence"] is True and result["categories"]["sexual"] is False
    assert result["category_scores"]["violence"] == pytest.approx(0.9)
    assert result["category_applied_input_types"]["violence"] == ["text"]
    assert result["s_codes"] == ["S1"] and result["s_code_scores"]["S1"] == pytest.approx(0.9)
    assert [r["flagged"] for r in guard.moderate(["a tree", "nude"], MAX_PIXELS)["results"]] == [False, True]
    [parts] = guard.moderate([{"type": "text", "text": "a tree"},
                              {"type": "image_url", "image_url": {"url": _data_url(RED)}}], MAX_PIXELS)["results"]
    assert parts["flagged"] and parts["categories"]["sexual"] and parts["s_codes"] == ["S12"]
    # Applied types: the parts whose backend answered for that category (the text was scored for S1 only).
    assert parts["category_applied_input_types"]["sexual"] == ["image"]
    assert parts["category_applied_input_types"]["violence"] == ["text"]


def test_a_category_over_its_threshold_is_flagged_even_when_the_policy_allows_it(tmp_path):
    """OpenAI's rule: any category true means flagged. The CLI's row and the moderation result agree."""
    policy = Policy.model_validate({"categories": {"S1": {"threshold": 0.5, "action": "allow"}}})
    guard = _guard(tmp_path, policy=policy)
    verdict = guard.check_prompt("a knife attack")
    assert verdict.action == "allow" and verdict.violated == ["S1"] and verdict.flagged
    [result] = guard.moderate("a knife attack", MAX_PIXELS)["results"]
    assert result["categories"]["violence"] is True and result["flagged"] is True


def test_moderation_refuses_remote_urls_and_junk(tmp_path):
    from guardforge.errors import InvalidRequest

    guard = _guard(tmp_path)
    with pytest.raises(InvalidRequest, match="data: URL"):
        guard.moderate([{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}], MAX_PIXELS)
    with pytest.raises(InvalidRequest):
        guard.moderate([{"type": "audio"}], MAX_PIXELS)
    with pytest.raises(InvalidRequest, match="not a readable"):
        guard.moderate([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}], MAX_PIXELS)
    with pytest.raises(InvalidRequest, match="over the limit"):
        guard.moderate([{"type": "image_url", "image_url": {"url": _data_url(RED)}}], max_pixels=10)


def test_from_settings_builds_nothing_until_used(tmp_path):
    from guardforge.settings import Settings

    settings = Settings(home=tmp_path, guard={"text_backend": "llama-guard", "image_backend": "shieldgemma2",
                                              "llama_guard_path": str(tmp_path / "missing")})
    guard = Guard.from_settings(settings)  # no weights anywhere: construction must not touch them
    verdict = guard.check_prompt("a tree")
    assert verdict.action == "block" and "config.json" in verdict.error  # fail closed, saying why
    assert (tmp_path / "guardforge.db").is_file()


def test_audit_log_touches_the_database_only_when_used(tmp_path):
    database = tmp_path / "sub" / "audit.db"
    log = AuditLog(Database(f"sqlite:///{database}"))
    assert not database.exists()  # building a Studio must not create files
    assert log.recent(5) == [] and database.is_file()


def test_embedded_text_weights_setting_picks_a_shipped_set_or_fails_closed(tmp_path):
    from guardforge.guard.registry import availability, backend_info
    from guardforge.settings import Settings

    default = Settings(home=tmp_path)
    assert availability(backend_info("embedded"), default) == "ready (text weights: prompts)"
    with pytest.raises(ValueError, match="not a shipped weight set"):
        Settings(home=tmp_path, guard={"embedded_text_weights": "comment"})

    missing = Settings(home=tmp_path, guard={"embedded_text_weights": str(tmp_path / "nowhere")})
    assert availability(backend_info("embedded"), missing) == f"missing text weights {tmp_path / 'nowhere'}"
    verdict = Guard.from_settings(missing).check_prompt("a tree")
    assert verdict.action == "block" and "neither a shipped set" in verdict.error

    comments = Settings(home=tmp_path, guard={"embedded_text_weights": "comments"})
    assert availability(backend_info("embedded"), comments) == "ready (text weights: comments)"
    guard = Guard.from_settings(comments)
    abusive = guard.check_prompt("shut up you worthless idiot, nobody wants you here")
    friendly = guard.check_prompt("thanks for the recipe, my kids loved it")
    assert abusive.unsafe > 0.5 > friendly.unsafe


def _record_one(url: str, barrier) -> None:
    from guardforge.guard.verdict import Verdict

    log = AuditLog(Database(url))
    barrier.wait()  # every process reaches its first write on a fresh database at once
    log.record(Verdict(checkpoint="prompt", action="allow", backend="x", content_sha256="0" * 64, policy_hash="p"))


def _fresh_database(db_url: str, tmp_path, trial: int) -> str:
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / f'audit-{trial}.db'}"
    return new_postgres_database(db_url.rpartition("/")[0])


def test_processes_starting_on_a_fresh_database_lose_no_audit_row(db_url, tmp_path):
    """The server, a CLI command and workers may all write the first row at once: create_all checks, then
    creates, and the loser of that race raised (SQLite: 'table already exists'; PostgreSQL: a unique violation
    in its catalogue) and lost its verdict's row."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(4):
        url = _fresh_database(db_url, tmp_path, trial)
        barrier = context.Barrier(6)
        workers = [context.Process(target=_record_one, args=(url, barrier)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [worker.exitcode for worker in workers] == [0] * 6
        assert len(AuditLog(Database(url)).recent(10)) == 6


def test_an_audit_write_that_fails_leaves_the_verdict_standing_and_says_so(tmp_path, caplog):
    """The audit write failing (here: SQLite's write lock held past the busy timeout by another process) does not
    fail the check: the verdict stands, a block still blocks, and the log says which rows were lost."""
    import logging
    import sqlite3

    path = tmp_path / "audit.db"
    guard = Guard(load_policy("default"), text_backend=FixedScores(TABLE), image_backend=FixedScores(TABLE),
                  audit=AuditLog(Database(f"sqlite:///{path}", busy_timeout_s=0.1)), store_content=True)
    guard.check_prompt("a tree")  # the table exists; only the next writes meet the lock
    other_process = sqlite3.connect(path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    try:
        with caplog.at_level(logging.ERROR, logger="guardforge.guard.service"):
            verdict = guard.check_prompt("a knife attack")
            [image_verdict] = guard.check_output_images([Image.new("RGB", (8, 8), RED)])
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()
    assert (verdict.action, verdict.violated, verdict.error) == ("block", ["S1"], None)
    assert image_verdict.action == "blur"  # the default policy blurs S12 in an output
    lost = [record.getMessage() for record in caplog.records]
    assert len(lost) == 2 and "database is locked" in lost[0] and text_sha256("a knife attack") in lost[0]
    assert "a knife attack" not in caplog.text  # the stored content stays out of the log
    guard.check_prompt("a tree")  # the lock gone, the next write goes in
    assert [row["action"] for row in guard.audit.recent(10)] == ["allow", "allow"]


def test_audit_survives_a_postgresql_restart(tmp_path, caplog):
    """After PostgreSQL restarts, the first audit write succeeds (pool_pre_ping replaces the dead pooled
    connection); while it is down, checks still answer, their rows logged as lost."""
    import logging

    from tests.livesrv import ThrowawayPostgres

    server = ThrowawayPostgres()  # its own server: the module's is shared with tests that need it up
    try:
        guard = _guard(tmp_path)
        guard.audit = AuditLog(Database(new_postgres_database(server.url)))
        assert guard.check_prompt("a knife attack").action == "block"  # a connection now waits in the pool
        server.stop()
        server.start()
        assert guard.check_prompt("a tree").action == "allow"  # on a fresh connection, not the dead one
        server.stop()
        with caplog.at_level(logging.ERROR, logger="guardforge.guard.service"):
            assert guard.check_prompt("nude").action == "block"  # answered with the database down
        assert "not recorded" in caplog.text
        server.start()
        assert guard.check_prompt("a tree").action == "allow"
        rows = guard.audit.recent(10)
        assert [(row["action"], row["content_sha256"]) for row in rows] == [
            ("allow", text_sha256("a tree")), ("allow", text_sha256("a tree")),
            ("block", text_sha256("a knife attack"))]
    finally:
        server.remove()
