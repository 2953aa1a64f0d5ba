"""The openai-compatible backend against a real HTTP server on loopback speaking /v1/chat/completions."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from guardforge.errors import GuardBackendError
from guardforge.guard.backends.openai_compat import OpenAICompatBackend, resolve_endpoint
from guardforge.guard.taxonomy import Category, Taxonomy


def _entry(token, logprob, top):
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}


def _logprob_answer():
    # "\n\nunsafe\nS10": P(unsafe)=0.8 vs safe 0.2; first category 10 (0.6), 1 (0.3), 15 (0.1)
    return [_entry("\n\n", -0.01, [("\n\n", -0.01)]),
            _entry("unsafe", math.log(0.8), [("unsafe", math.log(0.8)), ("safe", math.log(0.2))]),
            _entry("\n", -0.01, [("\n", -0.01)]),
            _entry("S", -0.01, [("S", -0.01)]),
            _entry("10", math.log(0.6), [("10", math.log(0.6)), ("1", math.log(0.3)), ("15", math.log(0.1))])]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        server = self.server
        with server.lock:
            server.seen.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
        content = body["messages"][0]["content"]
        text = next((part["text"] for part in content if part["type"] == "text"), "<image>")
        if text == "flaky":
            with server.lock:
                server.flaky += 1
                fail = server.flaky == 1
            if fail:
                return self._send(503, {"error": "warming up"})
        if text == "down":
            return self._send(503, {"error": "down"})
        if text == "slow":
            time.sleep(1.5)
        with server.lock:
            server.active += 1
            server.peak = max(server.peak, server.active)
        time.sleep(0.05)
        with server.lock:
            server.active -= 1
        if text == "labels":
            choice = {"message": {"role": "assistant", "content": "unsafe\nS1,S15"}, "logprobs": None}
        elif text == "safe":
            p = getattr(server, "safe_p_unsafe", 0.1)
            choice = {"message": {"role": "assistant", "content": "safe"},
                      "logprobs": {"content": [_entry("\n\n", -0.01, []),
                                               _entry("safe", math.log(1 - p), [("safe", math.log(1 - p)),
                                                                                 ("unsafe", math.log(p))])]}}
        elif text == "no-top":  # logprobs of the chosen tokens only, as some providers send them
            choice = {"message": {"role": "assistant", "content": "\n\nunsafe\nS10"},
                      "logprobs": {"content": [_entry(e["token"], e["logprob"], []) for e in _logprob_answer()]}}
        else:
            choice = {"message": {"role": "assistant", "content": "\n\nunsafe\nS10"},
                      "logprobs": {"content": _logprob_answer()}}
        self._send(200, {"id": "x", "object": "chat.completion", "choices": [{"index": 0, **choice}]})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.seen, httpd.lock, httpd.flaky, httpd.active, httpd.peak = [], threading.Lock(), 0, 0, 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


TAXONOMY = Taxonomy(excluded=("S14",), custom=(Category("XD", "Deepfakes", "fake photos of real people", True),))


def _backend(server, **kwargs) -> OpenAICompatBackend:
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return OpenAICompatBackend(url, "meta-llama/llama-guard-4-12b", TAXONOMY, api_key="sk-test",
                               backoff_s=0.01, **kwargs)


def test_logprobs_give_probabilities(server):
    [result] = _backend(server).score_texts(["a knife attack"])
    assert result.unsafe == pytest.approx(0.8) and not result.labels_only
    assert result.scores["S10"] == pytest.approx(0.8)
    assert result.scores["S1"] == pytest.approx(0.8 * 0.3 / 0.6)
    assert result.scores["XD"] == pytest.approx(0.8 * 0.1 / 0.6)  # S15 on the wire is our custom XD
    assert result.scores["S2"] == 0.0 and "S14" not in result.scores
    request = server.seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    body = request["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 20
    assert body["chat_template_kwargs"]["excluded_category_keys"] == ["S14"]
    assert body["chat_template_kwargs"]["categories"]["S15"].startswith("Deepfakes.")


def test_a_safe_answer_names_no_category(server):
    """P(unsafe) of a "safe" answer belongs to no category: spread over all of them, a 0.25 crossed S4's 0.2
    and blocked harmless prompts as child exploitation. The policy's overall rule judges P(unsafe)."""
    [result] = _backend(server).score_texts(["safe"])
    assert result.unsafe == pytest.approx(0.1)
    assert len(result.scores) == 14 and all(v == 0.0 for v in result.scores.values())


def test_a_safe_answer_at_a_quarter_passes_the_shipped_policies(server):
    from guardforge.guard.policy import load_policy

    server.safe_p_unsafe = 0.25
    [result] = _backend(server).score_texts(["safe"])
    assert result.unsafe == pytest.approx(0.25)
    for name in ("default", "permissive"):
        assert load_policy(name).decide(result.scores, unsafe=result.unsafe, checkpoint="prompt") == ([], "allow")


def test_labels_when_the_provider_sends_no_top_logprobs(server):
    [result] = _backend(server).score_texts(["no-top"])
    assert result.labels_only and result.unsafe == 1.0 and result.scores["S10"] == 1.0
    assert result.scores["S1"] == 0.0


def test_labels_only_without_logprobs(server):
    [result] = _backend(server).score_texts(["labels"])
    assert result.labels_only and result.unsafe == 1.0
    assert result.scores["S1"] == 1.0 and result.scores["XD"] == 1.0 and result.scores["S10"] == 0.0


def test_images_go_as_data_urls(server):
    _backend(server).score_images([Image.new("RGB", (8, 8), "red")])
    [part] = server.seen[0]["body"]["messages"][0]["content"]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")


def test_retries_503_then_succeeds(server):
    [result] = _backend(server).score_texts(["flaky"])
    assert result.unsafe == pytest.approx(0.8) and len(server.seen) == 2


def test_gives_up_after_retries(server):
    with pytest.raises(GuardBackendError, match="503 .after 3 attempts"):
        _backend(server, max_retries=2).score_texts(["down"])
    assert len(server.seen) == 3


def test_connect_error_is_retried_then_reported():
    backend = OpenAICompatBackend("http://127.0.0.1:9/v1", "m", TAXONOMY, max_retries=1, backoff_s=0.01)
    with pytest.raises(GuardBackendError, match="ConnectError"):
        backend.score_texts(["x"])


def test_read_timeout_is_an_error(server):
    with pytest.raises(Exception, match="(?i)timed out"):
        _backend(server, timeout_s=0.3).score_texts(["slow"])


def test_concurrency_limit(server):
    results = _backend(server, concurrency=2).score_texts([f"t{i}" for i in range(8)])
    assert len(results) == 8 and server.peak <= 2


def test_guard_times_out_a_slow_server_and_fails_closed(server, tmp_path):
    from guardforge.guard.policy import load_policy
    from guardforge.guard.service import Guard

    guard = Guard(load_policy("default"), text_backend=_backend(server), audit=None, timeout_s=0.5)
    verdict = guard.check_prompt("slow")
    assert verdict.action == "block" and "timed out" in verdict.error
    ok = guard.check_prompt("a knife attack")
    assert ok.violated == ["S10"] and ok.action == "block" and ok.backend == "openai-compatible"


def test_endpoint_from_settings_or_env(monkeypatch):
    from guardforge.settings import GuardSettings

    monkeypatch.setenv("OPENAI_BASE_URL", "http://env:8000/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    assert resolve_endpoint(GuardSettings()) == ("http://env:8000/v1", "sk-env")
    assert resolve_endpoint(GuardSettings(openai_base_url="http://cfg/v1", openai_api_key="k")) == ("http://cfg/v1", "k")
