"""The X/Y/Z plot on the tiny model, in-process: every cell is pixel for pixel the single generation it stands for
and sits in the grid where its labels say; the guard screens each cell's prompt after Prompt S/R and a blocked
cell shows as blocked; the native API queues a grid as one job, follows it and cancels it mid-grid; the CLI
writes the grid and the cells.

The guard's backends are test-only classes implementing its backend protocol (a text model that knows one unsafe
word); the Guard, the Policy, the Studio, the engine, the queue, the workers and the app are the real ones."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from guardforge.db import Database
from guardforge.engine.request import GenerationRequest
from guardforge.engine.xyz import GridRequest
from guardforge.errors import InvalidRequest, ModelNotFound
from guardforge.guard.audit import AuditLog
from guardforge.guard.backends.base import Scores
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from guardforge.settings import Settings
from guardforge.storage.outputs import read_infotext
from guardforge.studio import Studio
from tests.inprocess_cli import cli_caller
from tests.livesrv import make_home

SIZE = 32


class KnowsNude:
    """Text backend: S12 = 0.9 for a text with the word 'nude'; keeps every text it read."""

    name = "test-nude"
    categories = frozenset({"S12"})

    def __init__(self):
        self.read: list[str] = []

    def score_texts(self, texts: list[str]) -> list[Scores]:
        self.read += texts
        return [Scores({"S12": 0.9 if "nude" in text.split() else 0.001}) for text in texts]


class SafeImages:
    name = "test-safe-images"
    categories = frozenset({"S12"})

    def score_images(self, images):
        return [Scores({"S12": 0.001}) for _ in images]


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir):
    return make_home(tmp_path_factory.mktemp("xyz"), tiny_model_dir)


@pytest.fixture(scope="module")
def text_guard():
    return KnowsNude()


@pytest.fixture(scope="module")
def studio(home, text_guard):
    studio = Studio(Settings(home=home, default_model="tiny-sd", device="cpu"),
                    guard=Guard(load_policy("default"), text_backend=text_guard, image_backend=SafeImages(),
                                audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))
    yield studio
    studio.stop_workers()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def slot(grid: Image.Image, nx: int, ny: int, ix: int, iy: int) -> Image.Image:
    """A cell's slot: the labels pad the grid's top and left only, so slots sit fixed from its bottom right."""
    left, top = grid.width - (nx - ix) * SIZE, grid.height - (ny - iy) * SIZE
    return grid.crop((left, top, left + SIZE, top + SIZE))


def test_cells_equal_the_single_generations_they_stand_for(studio):
    base = GenerationRequest(prompt="a red circle", negative_prompt="red blur", steps=2, width=SIZE, height=SIZE,
                             seed=-1)
    grid = GridRequest(request=base, x={"field": "cfg", "values": "1-7 [2]"},
                       y={"field": "Prompt S/R", "values": "red, blue"},
                       z={"field": "sampler", "values": "Euler a, DPM++ 2M"}, draw_legend=False)
    result = studio.generate_grid(grid)
    seed = result.cells[0].result.seeds[0]
    assert {cell.result.seeds[0] for cell in result.cells} == {seed}  # -1 drawn once for the whole grid
    [whole] = result.grids
    assert whole.width == 2 * 2 * SIZE and whole.height == 2 * SIZE  # two 2x2 sub-grids side by side, no legend
    for cell in result.cells:
        colour = ("red", "blue")[cell.iy]
        # The single request written out by hand from the cell's place on the axes, not taken from the grid.
        single = GenerationRequest(prompt=f"a {colour} circle", negative_prompt=f"{colour} blur", steps=2,
                                   width=SIZE, height=SIZE, seed=seed, cfg_scale=(1.0, 7.0)[cell.ix],
                                   sampler=("Euler a", "DPM++ 2M")[cell.iz])
        alone = studio.generate(single, save=False).images[0]
        assert np.array_equal(pixels(alone.pil), pixels(cell.image.pil)), cell.labels
        assert alone.infotext == cell.image.infotext
        placed = whole.pil.crop((cell.iz * 2 * SIZE + cell.ix * SIZE, cell.iy * SIZE,
                                 cell.iz * 2 * SIZE + (cell.ix + 1) * SIZE, (cell.iy + 1) * SIZE))
        assert np.array_equal(pixels(placed), pixels(alone.pil)), cell.labels
    # Saved as A1111 saves them: the cells with the txt2img images, the grid apart with the first cell's infotext
    # and the script's axes.
    assert "txt2img-grids" in whole.path and all("txt2img-images" in c.image.path for c in result.cells)
    text = read_infotext(whole.path)
    first = result.cells[0].image.infotext
    assert text == (f'{first}, Script: X/Y/Z plot, X Type: CFG Scale, X Values: 1-7 [2], Y Type: Prompt S/R, '
                    f'Y Values: "red, blue", Z Type: Sampler, Z Values: "Euler a, DPM++ 2M"')
    assert np.array_equal(pixels(Image.open(whole.path)), pixels(whole.pil))


def test_each_cells_prompt_is_guarded_and_a_blocked_cell_shows_blocked(studio, text_guard):
    from guardforge.guard.blur import withheld_tile

    base = GenerationRequest(prompt="a red circle", steps=2, width=SIZE, height=SIZE, seed=4)
    grid = GridRequest(request=base, x={"field": "Prompt S/R", "values": "red, nude, blue"})
    result = studio.generate_grid(grid, save=False)
    assert "a nude circle" in text_guard.read  # the text the cell would have encoded, after S/R
    red, nude, blue = result.cells
    assert nude.blocked and nude.result.blocked and nude.image is None
    assert not red.blocked and not blue.blocked
    [whole] = result.grids
    assert whole.action == "flag" and whole.height > SIZE  # the legend's row of labels above the cells
    assert np.array_equal(pixels(slot(whole.pil, 3, 1, 1, 0)), pixels(withheld_tile(SIZE, SIZE)))
    assert np.array_equal(pixels(slot(whole.pil, 3, 1, 2, 0)), pixels(blue.image.pil))
    assert whole.infotext.startswith("a red circle\n")


def test_a_grid_over_the_servers_limits_or_with_an_unknown_model_is_refused_at_submit(studio, monkeypatch):
    base = GenerationRequest(prompt="a circle", steps=2, width=SIZE, height=SIZE)
    monkeypatch.setattr(studio.settings.limits, "max_grid_cells", 4)
    with pytest.raises(InvalidRequest, match=r"the grid has 6 cells \(3 x 2 x 1\), over this server's limit of 4"):
        studio.submit_grid(GridRequest(request=base, x={"field": "steps", "values": "1-3"},
                                       y={"field": "cfg", "values": "1, 2"}))
    with pytest.raises(InvalidRequest, match="steps=500 is over this server's limit"):
        studio.submit_grid(GridRequest(request=base, x={"field": "steps", "values": "2, 500"}))
    with pytest.raises(ModelNotFound, match="gone"):
        studio.submit_grid(GridRequest(request=base, x={"field": "model", "values": "tiny-sd, gone"}))


def wait_for(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_the_api_queues_a_grid_as_one_job_follows_it_and_cancels_it_mid_grid(studio):
    from fastapi.testclient import TestClient

    from guardforge.server.app import create_app

    base = {"prompt": "a red circle", "steps": 2, "width": SIZE, "height": SIZE, "seed": 9}
    with TestClient(create_app(studio, mount_ui=False)) as http:
        refused = http.post("/v1/grids", json={"request": base, "x": {"field": "cfg", "values": "1, lots"}})
        assert refused.status_code == 422 and "'lots' is not a number" in refused.text, refused.text
        created = http.post("/v1/grids", json={"request": base, "x": {"field": "steps", "values": "1, 2"},
                                               "include_sub_grids": True}, params={"save": False})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        job = wait_for(lambda: (view := http.get(f"/v1/jobs/{job_id}").json())["state"] in (
            "succeeded", "failed", "cancelled") and view)
        assert (job["kind"], job["state"]) == ("grid", "succeeded"), job
        result = job["result"]
        assert result["grid_count"] == 1 and [c["labels"][0] for c in result["cells"]] == ["Steps: 1", "Steps: 2"]
        assert [c["image_index"] for c in result["cells"]] == [1, 2] and len(job["images"]) == 3
        grid = Image.open(io.BytesIO(http.get(job["images"][0]["url"]).content))
        assert "X Type: Steps" in grid.info["parameters"]
        cell = Image.open(io.BytesIO(http.get(job["images"][2]["url"]).content))
        assert np.array_equal(pixels(slot(grid, 2, 1, 1, 0)), pixels(cell))

        long = {**base, "steps": 12}
        job_id = http.post("/v1/grids", json={"request": long, "x": {"field": "seed", "values": "1-4"}},
                           params={"save": False}).json()["id"]
        # The progress counts every cell's steps: the second cell is running when its steps come after the first's.
        running = wait_for(lambda: (event := studio.latest_event(job_id)) and event.get("step", 0) > 12 and event)
        assert running["total"] == 48
        cancelled = http.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200
        job = wait_for(lambda: (view := http.get(f"/v1/jobs/{job_id}").json())["state"] in (
            "succeeded", "failed", "cancelled") and view)
        assert job["state"] == "cancelled" and job["images"] == [], job


def test_the_cli_writes_the_grid_and_each_cell(home, monkeypatch, capsys):
    run = cli_caller(monkeypatch, capsys, {"GUARDFORGE_HOME": str(home), "GUARDFORGE_GUARD__POLICY": "off",
                                           "GUARDFORGE_DEFAULT_MODEL": "tiny-sd", "GUARDFORGE_DEVICE": "cpu"})

    code, out, err = run("grid", "a red circle", "--x", "cfg=1,7", "--y", "sampler=Euler a,DPM++ 2M",
                         "--steps", "2", "--width", str(SIZE), "--height", str(SIZE), "--seed", "3")
    assert code == 0, err
    lines = out.splitlines()
    grid_path = lines[0].split("  ")[0]
    assert lines[0].split("  ")[1].startswith("grid ") and "txt2img-grids" in grid_path
    assert "X Type: CFG Scale, X Values: \"1,7\", Y Type: Sampler" in read_infotext(grid_path)
    cells = [line.split("  ") for line in lines[1:5]]
    assert [cell[1] for cell in cells] == ["CFG Scale: 1.0 | Euler a", "CFG Scale: 7.0 | Euler a",
                                           "CFG Scale: 1.0 | DPM++ 2M", "CFG Scale: 7.0 | DPM++ 2M"]
    assert all(os.path.isfile(cell[0]) and cell[2] == "seed=3" for cell in cells)
    assert lines[5].startswith("4 cell(s), 0 blocked")
    code, _, err = run("grid", "a circle", "--x", "cfg")
    assert code == 2 and err.strip().splitlines() == ["error: --x 'cfg': give FIELD=VALUES, e.g. --x \"cfg=1,4,7\""]
    code, _, err = run("grid", "a circle", "--x", "steps=1-10 (+0)", "--steps", "2")
    assert code == 2 and "the step cannot be 0" in err and "Traceback" not in err
