"""Outputs and DreamBooth runs beyond local disk: name rules on memory://, then a real S3 server (moto) on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import time
import uuid

import pytest
from PIL import Image

from guardforge.storage.folders import UnsafeName, check_name
from guardforge.storage.outputs import OutputStore, read_infotext


@pytest.fixture
def memory_root():
    import fsspec

    root = f"gf-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.mark.parametrize("name", ["..", "../x.png", "a/../../x.png", "/etc/passwd", "a//b", "a/./b", "",
                                  "s3://other/x.png", "a\\..\\b", "C:x", "a/b\0c", "a b"])
def test_names_that_could_leave_the_root_are_refused(name):
    with pytest.raises(UnsafeName):
        check_name(name)


def test_plain_names_pass():
    assert check_name("txt2img-images/2026-12-07/00000-7.png") == "txt2img-images/2026-12-07/00000-7.png"
    assert check_name("txt2img-images/2026-12-07/.00001.reserved")


def test_store_on_an_fsspec_url_numbers_reads_back_and_deletes(memory_root):
    import fsspec

    fs = fsspec.filesystem("memory")
    store = OutputStore(f"memory://{memory_root}/outputs", "png")
    image = Image.new("RGB", (16, 16), "blue")
    first = store.save(image, "a cat\nSteps: 2, Seed: 7", {"action": "allow"}, "txt2img", 7)
    second = store.save(image, "x", None, "inpaint", 8)
    day = first.split("/")[-2]  # today's date, as the store saw it (a test run may straddle midnight)
    assert dt.date.fromisoformat(day) and first == f"memory:///{memory_root}/outputs/txt2img-images/{day}/00000-7.png"
    assert second.startswith(f"memory:///{memory_root}/outputs/img2img-images/") and second.endswith("/00000-8.png")
    assert store.save(image, "y", None, "txt2img", 9) == first.replace("00000-7", "00001-9")
    assert read_infotext(io.BytesIO(store.read(first))) == "a cat\nSteps: 2, Seed: 7"
    verdict = fs.cat_file(f"/{memory_root}/outputs/txt2img-images/{day}/00000-7.verdict.json")
    assert json.loads(verdict) == {"action": "allow"}
    assert not [p for p in fs.find(f"/{memory_root}") if p.endswith(".reserved")]  # every claim let go

    assert store.delete(first) and not fs.exists(f"/{memory_root}/outputs/txt2img-images/{day}/00000-7.verdict.json")
    assert not store.delete(first)  # already gone
    with pytest.raises(FileNotFoundError):
        store.read(first)


def test_addresses_outside_the_prefix_are_neither_read_nor_deleted(memory_root, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    store = OutputStore(f"memory://{memory_root}/outputs", "png")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    # A sibling prefix that merely starts alike, and a '..' that would climb out of the prefix.
    fs.pipe_file(f"/{memory_root}/outputs-other/secret.png", png.getvalue())
    fs.pipe_file(f"/{memory_root}/secret.png", png.getvalue())
    for address in (f"memory:///{memory_root}/outputs-other/secret.png",
                    f"memory:///{memory_root}/outputs/../secret.png",
                    f"s3://{memory_root}/outputs/secret.png"):
        assert not store.delete(address)
        with pytest.raises(FileNotFoundError):
            store.read(address)
    assert fs.exists(f"/{memory_root}/outputs-other/secret.png") and fs.exists(f"/{memory_root}/secret.png")
    # An image saved to the local outputs folder before the outputs moved to a URL is still served from there.
    (tmp_path / "00000-1.png").write_bytes(png.getvalue())
    assert store.read(str(tmp_path / "00000-1.png")) == png.getvalue()
    assert not store.delete(str(tmp_path / "00000-1.png"))  # but not removed: it is not in this store

    # A mode is a folder name: one that would climb out is refused before anything is written.
    with pytest.raises(UnsafeName):
        store.save(Image.new("RGB", (4, 4)), "x", None, "../../escape", 1)
    assert sorted(fs.find(f"/{memory_root}")) == [f"/{memory_root}/outputs-other/secret.png",
                                                  f"/{memory_root}/secret.png"]


def test_a_file_url_is_a_local_folder_and_an_unknown_scheme_is_refused(tmp_path):
    from guardforge.errors import InvalidRequest

    path = OutputStore(f"file://{tmp_path}", "png").save(Image.new("RGB", (4, 4)), "x", None, "txt2img", 3)
    assert path.is_file() and path.parent.parent.parent == tmp_path  # written as to any local folder
    with pytest.raises(InvalidRequest, match="nosuch"):
        OutputStore("nosuch://bucket/outputs", "png")


def test_s3fs_is_imported_only_for_an_s3_url(tmp_path):
    # A subprocess: this module's S3 tests import s3fs into the test process.
    import subprocess
    import sys

    code = ("import sys; from guardforge.storage.outputs import OutputStore; "
            f"OutputStore({str(tmp_path)!r}); OutputStore('memory://gf-probe/outputs'); "
            "print('s3fs' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          ).stdout.strip() == "False"


def test_settings_take_the_url_and_options_from_the_environment(monkeypatch, tmp_path):
    from pydantic import ValidationError

    from guardforge.settings import Settings

    monkeypatch.setenv("GUARDFORGE_STORAGE__OUTPUTS_URL", "s3://bucket/prefix")
    monkeypatch.setenv("GUARDFORGE_STORAGE__OPTIONS", '{"endpoint_url": "http://127.0.0.1:9000"}')
    settings = Settings(home=tmp_path)
    assert settings.resolved_outputs_location == "s3://bucket/prefix"
    assert settings.storage.options == {"endpoint_url": "http://127.0.0.1:9000"}
    with pytest.raises(ValidationError, match="not both"):
        Settings(home=tmp_path, outputs_dir=tmp_path / "out")
    monkeypatch.delenv("GUARDFORGE_STORAGE__OUTPUTS_URL")
    assert Settings(home=tmp_path).resolved_outputs_location == tmp_path / "outputs"  # as before


# -- a real S3 server on loopback ----------------------------------------------------------------------
BUCKET = "guardforge-outputs"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 in server mode on a free loopback port, with one bucket; credentials in the environment, where
    s3fs (through botocore) reads them."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    server.stop()


def _keys(client, prefix: str) -> list[str]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_servers_sharing_a_bucket_never_take_the_same_number(s3):
    endpoint, client = s3
    prefix = f"shared-{uuid.uuid4().hex[:8]}"
    # Two stores, as two servers would have, on one prefix.
    first, second = (OutputStore(f"s3://{BUCKET}/{prefix}", "png", {"endpoint_url": endpoint}) for _ in range(2))
    # A number is claimed with a conditional put: the second server's claim on the same number is refused.
    assert first.files.create("txt2img-images/x/.00007.reserved")
    assert not second.files.create("txt2img-images/x/.00007.reserved")

    # The other server holds number 0 (its image is not in place yet): this one takes the next.
    folder = first.folder("txt2img")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/.00000.reserved", Body=b"")
    image = Image.new("RGB", (8, 8))
    assert first.save(image, "x", None, "txt2img", 5).endswith(f"{folder}/00001-5.png")
    assert second.save(image, "x", None, "txt2img", 6).endswith(f"{folder}/00002-6.png")
    client.delete_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/.00000.reserved")
    assert _keys(client, f"{prefix}/{folder}/") == [f"{prefix}/{folder}/00001-5.png", f"{prefix}/{folder}/00002-6.png"]


@pytest.fixture(scope="module")
def s3_api(s3, tmp_path_factory, tiny_model_dir):
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app
    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.livesrv import make_home

    endpoint, client = s3
    home = make_home(tmp_path_factory.mktemp("s3-api"), tiny_model_dir)
    studio = Studio(Settings(home=home, default_model="tiny-sd", device="cpu", guard={"policy": "off"},
                             server={"require_auth": True},
                             storage={"outputs_url": f"s3://{BUCKET}/studio", "options": {"endpoint_url": endpoint}}))
    keys = {name: studio.keys.create(name)[1] for name in ("alice", "bob")}
    with TestClient(create_app(studio, mount_ui=False)) as http:
        yield http, keys, client, home


def _as(keys, name):
    return {"Authorization": f"Bearer {keys[name]}"}


def _done(http, headers, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_the_api_writes_to_s3_and_reads_back_from_it_per_key(s3_api):
    http, keys, client, home = s3_api
    alice, bob = _as(keys, "alice"), _as(keys, "bob")

    created = http.post("/v1/jobs", headers=alice, json={"prompt": "a red square", "steps": 1, "width": 32,
                                                         "height": 32, "seed": 11})
    assert created.status_code == 202, created.text
    job = _done(http, alice, created.json()["id"])
    assert job["state"] == "succeeded", job
    stored = _keys(client, "studio/")
    image_key = next(key for key in stored if key.endswith("-11.png"))
    day = image_key.split("/")[-2]
    assert image_key == f"studio/txt2img-images/{day}/00000-11.png" and dt.date.fromisoformat(day)
    assert f"studio/txt2img-images/{day}/00000-11.verdict.json" in stored
    served = http.get(job["images"][0]["url"], headers=alice)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    in_bucket = client.get_object(Bucket=BUCKET, Key=image_key)["Body"].read()
    assert served.content == in_bucket
    assert "Seed: 11" in read_infotext(io.BytesIO(served.content))
    # Another key is told there is no such image, though its object sits in the same bucket.
    assert http.get(job["images"][0]["url"], headers=bob).status_code == 404

    # A1111's txt2img, told to save, answers with the image it read back from the bucket.
    answer = http.post("/sdapi/v1/txt2img", headers=bob, json={"prompt": "a blue circle", "steps": 1, "width": 32,
                                                               "height": 32, "seed": 12, "save_images": True})
    assert answer.status_code == 200, answer.text
    sent = base64.b64decode(answer.json()["images"][0])
    second_key = next(key for key in _keys(client, "studio/") if key.endswith("-12.png"))
    assert second_key.startswith("studio/txt2img-images/") and second_key.rsplit("/", 1)[1] in ("00000-12.png",
                                                                                                "00001-12.png")
    assert sent == client.get_object(Bucket=BUCKET, Key=second_key)["Body"].read()
    assert not (home / "outputs").exists()  # nothing went to the local outputs folder

    # The object gone (a lifecycle rule, a user's clean-up): a 404 that says so, not a 500.
    client.delete_object(Bucket=BUCKET, Key=image_key)
    gone = http.get(job["images"][0]["url"], headers=alice)
    assert gone.status_code == 404 and "no longer" in gone.text


# -- DreamBooth run folders in a store -----------------------------------------------------------------
def test_a_run_folder_goes_to_the_store_and_resumes_on_a_node_without_it(s3, gf_home, tmp_path):
    import shutil

    from guardforge.settings import Settings
    from guardforge.studio import Studio
    from tests.test_dreambooth_train import make_images, tiny_config

    endpoint, client = s3
    prefix = f"runs-{uuid.uuid4().hex[:8]}"
    studio = Studio(Settings(home=gf_home, guard={"policy": "off"},
                             storage={"training_url": f"s3://{BUCKET}/{prefix}", "options": {"endpoint_url": endpoint}}))
    runs = studio.settings.resolved_training_runs_dir
    make_images(tmp_path / "instance", (40, 200, 40), count=2)
    config = tiny_config(tmp_path, "tiny-sd", with_prior_preservation=False, mode="lora", max_steps=2,
                         checkpoint_interval=1, export_name="sks-remote", output_dir=runs / "local" / "sks")
    assert studio.train_dreambooth(config).steps == 2
    stored = _keys(client, f"{prefix}/local/sks/")
    assert f"{prefix}/local/sks/checkpoints/last.ckpt" in stored and f"{prefix}/local/sks/logs/metrics.csv" in stored

    # Another node: no local run folder; "latest" is fetched from the store and training goes on from step 2.
    shutil.rmtree(config.output_dir)
    events = []
    resumed = studio.train_dreambooth(config.model_copy(update={"max_steps": 3}), progress=events.append,
                                      resume="latest")
    assert resumed.steps == 3 and [e.step for e in events if e.phase == "training"] == [3]
    assert (config.output_dir / "checkpoints" / "last.ckpt").is_file()
    # A folder outside the runs folder (a CLI run of its own) is not mirrored, nor can a path climb out.
    assert studio.run_mirror.remote_of(tmp_path / "elsewhere") is None
    assert studio.run_mirror.remote_of(runs / "local" / ".." / ".." / "x") is None
