"""The X/Y/Z plot as a built-in script (scripts/xyz_plot.py), in-process on the tiny model: a request naming it
makes the `grid` job's pixels for the same grid (grid, cells, blocked cell and infotext), with one progress over
all cells; A1111's positional args and script-info come from the script; its cells are checked at submit
against the server's limits; `generate --script` runs it.

The guard's backends are test-only classes implementing its backend protocol (tests/test_xyz_grid.py: a text
model that knows one unsafe word); the Guard, the Policy, the Studio, the registry and the engine are real."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from guardforge.db import Database
from guardforge.engine.request import GenerationRequest
from guardforge.engine.xyz import GridRequest
from guardforge.errors import InvalidRequest, ModelNotFound
from guardforge.guard.audit import AuditLog
from guardforge.guard.policy import load_policy
from guardforge.guard.service import Guard
from guardforge.settings import Settings
from guardforge.studio import Studio
from tests.livesrv import make_home
from tests.test_xyz_grid import KnowsNude, SafeImages

SMALL = {"steps": 1, "width": 32, "height": 32, "seed": 11}
AXES = {"x": {"field": "cfg", "values": "1, 7"}, "y": {"field": "Prompt S/R", "values": "red, nude"}}


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_model_dir):
    home = make_home(tmp_path_factory.mktemp("xyz-script"), tiny_model_dir)
    return Studio(Settings(home=home, default_model="tiny-sd", device="cpu"),
                  guard=Guard(load_policy("default"), text_backend=KnowsNude(), image_backend=SafeImages(),
                              audit=AuditLog(Database(f"sqlite:///{home / 'audit.db'}"))))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_the_script_makes_the_grid_jobs_pixels_with_one_progress_over_all_cells(studio):
    base = GenerationRequest(prompt="a red circle", **SMALL)
    grid_events, events = [], []
    job = studio.generate_grid(GridRequest(request=base, **AXES), save=False, on_progress=grid_events.append)
    script = studio.generate(base.model_copy(update={"scripts": {"x/y/z plot": AXES}}), save=False,
                             on_progress=events.append)
    grid, *cells = script.images
    assert np.array_equal(pixels(grid.pil), pixels(job.grids[0].pil))
    assert grid.infotext == job.grids[0].infotext and ", Script: X/Y/Z plot, X Type: CFG Scale" in grid.infotext
    # The row whose prompt became "a nude circle" was blocked before it ran, in both: the withheld tiles in the
    # grid (compared above), no images among the cells.
    delivered = [cell.image for cell in job.cells if cell.image is not None]
    assert len(delivered) == 2 and [c.seed for c in cells] == [11, 11]
    assert [c.result.blocked for c in job.cells] == [False, False, True, True]
    for mine, theirs in zip(cells, delivered, strict=True):
        assert np.array_equal(pixels(mine.pil), pixels(theirs.pil)) and mine.infotext == theirs.infotext
    assert "Script" not in cells[0].infotext  # a cell is the generation it stands for
    # One progress over the four cells (one step each), as the grid job's: the blocked ones report no step.
    assert [(e.step, e.total, e.batch_index) for e in events] == [(1, 4, 0), (2, 4, 1)]
    assert [(e.step, e.total, e.batch_index) for e in grid_events] == [(1, 4, 0), (2, 4, 1)]


def test_an_interrupt_ends_the_scripts_grid_after_the_running_cell(studio):
    """A1111's interrupt reaches the cells through the run's generate: the running cell ends, no other runs, and
    the grid shows the cells not made as black."""
    from threading import Event

    interrupt = Event()
    result = studio.generate(GenerationRequest(prompt="a red circle", **SMALL, scripts={
        "x/y/z plot": {"x": "steps=1,1,1", "draw_legend": False}}), save=False, interrupt=interrupt,
        on_progress=lambda event: interrupt.set())
    grid, *cells = result.images
    assert len(cells) == 1 and (grid.width, grid.height) == (96, 32)
    assert pixels(grid.pil)[:, 32:].max() == 0 and np.array_equal(pixels(grid.pil)[:, :32], pixels(cells[0].pil))


def test_a1111_positional_args_and_script_info_come_from_the_script(studio):
    from guardforge.a1111.scripts import script_info, scripts_listed
    from guardforge.scripts.xyz_plot import axis_labels

    xyz = studio.scripts.find("X/Y/Z plot")
    labels = axis_labels()
    positional = [labels.index("CFG Scale"), "1, 7", [], "Prompt S/R", "red, nude", [], 0, "", []]
    assert xyz.parse_args(positional, "txt2img") == xyz.parse_args(AXES)
    # On img2img's tab A1111's index 6 is another axis, one guardforge has no equivalent of.
    with pytest.raises(InvalidRequest, match="'Image CFG Scale' has no equivalent"):
        xyz.parse_args(positional, "img2img")
    installed = studio.scripts_installed()
    assert "x/y/z plot" in scripts_listed(installed)["txt2img"] and "x/y/z plot" in scripts_listed(installed)["img2img"]
    infos = {(info.name, info.is_img2img): info for info in script_info(installed)}
    assert [arg.label for arg in infos[("x/y/z plot", False)].args][:4] == ["X type", "X values",
                                                                          "X values (dropdown)", "Y type"]
    assert infos[("x/y/z plot", True)].args[0].choices == axis_labels(img2img=True)
    assert len([name for name, _ in infos if name == "x/y/z plot"]) == 2  # listed once per tab, no longer twice


def test_a_grids_infotext_gives_its_axes_back_with_the_seeds_it_drew(studio):
    from guardforge.engine.infotext import parse_infotext
    from guardforge.engine.xyz import fix_seeds, grid_infotext, plan_grid

    grid = fix_seeds(GridRequest(request=GenerationRequest(prompt="a red circle", **SMALL), **AXES,
                                 z={"field": "seed", "values": "-1, 4"}))
    text = grid_infotext("a red circle\nSteps: 1, Seed: 11", grid, plan_grid(grid))
    read = studio.scripts.args_from_infotext(parse_infotext(text))
    again = studio.scripts.find("xyz_plot").parse_args(read["xyz_plot"])
    assert [axis.parsed() for axis in again.axes()] == [axis.parsed() for axis in grid.axes()]
    assert again.z.parsed()[0] != -1 and studio.scripts.args_from_infotext(parse_infotext("a cat\nSteps: 1")) == {}


def test_the_scripts_cells_are_checked_at_submit(studio, monkeypatch):
    base = GenerationRequest(prompt="a circle", **SMALL)

    def submit(axes):
        return studio.submit(base.model_copy(update={"scripts": {"xyz_plot": axes}}))

    monkeypatch.setattr(studio.settings.limits, "max_grid_cells", 4)
    with pytest.raises(InvalidRequest, match="script 'xyz_plot' would make 6 images, over this server's limit of 4"):
        submit({"x": "steps=1-3", "y": "cfg=1,2"})
    with pytest.raises(InvalidRequest, match="steps=500 is over this server's limit"):
        submit({"x": "steps=1,500"})
    with pytest.raises(InvalidRequest, match="the cell CFG Scale = 900.0: cfg_scale"):
        submit({"x": "cfg=1,900"})
    with pytest.raises(ModelNotFound, match="gone"):
        submit({"x": "model=tiny-sd,gone"})
    # A grid job's cell is one generation: a request naming the script would make each cell a grid.
    with pytest.raises(InvalidRequest, match="cannot name the script 'xyz_plot', which runs several"):
        studio.submit_grid(GridRequest(request=base.model_copy(update={"scripts": {"X/Y/Z plot": AXES}}),
                                       x={"field": "steps", "values": "1, 2"}))
    assert "jobs" not in studio.__dict__  # refused before the queue was touched: no job for any of them


def test_generate_with_the_script_from_the_cli(gf_home, monkeypatch, capsys):
    from guardforge.storage.outputs import read_infotext
    from tests.inprocess_cli import cli_caller

    call = cli_caller(monkeypatch, capsys, {"GUARDFORGE_GUARD__POLICY": "off"})
    code, out, err = call("generate", "a red circle", "-m", "tiny-sd", "--steps", "1", "--width", "32", "--height",
                          "32", "--seed", "3", "--script", "x/y/z plot", "--script-arg", "x=steps=1,2",
                          "--script-arg", "draw_legend=false")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("3 image(s)")  # the grid, then its two cells
    grid = Image.open(lines[0].split()[0])
    assert grid.size == (64, 32) and "txt2img-grids" in lines[0]
    assert read_infotext(lines[0].split()[0]).endswith("Script: X/Y/Z plot, X Type: Steps, X Values: \"1,2\"")
    cells = [Image.open(line.split()[0]) for line in lines[1:3]]
    assert np.array_equal(pixels(grid), np.hstack([pixels(cell) for cell in cells]))
    code, out, err = call("generate", "a red circle", "--script", "x/y/z plot", "--script-arg", "x=warp=1,2")
    assert code == 2 and "no X/Y/Z axis 'warp'" in err and len(err.strip().splitlines()) == 1


def test_from_png_remakes_a_grid_over_a_dynamic_prompt(gf_home, monkeypatch, capsys):
    from guardforge.engine.dynamic_prompts import Wildcards, expand
    from tests.inprocess_cli import cli_caller

    call = cli_caller(monkeypatch, capsys, {"GUARDFORGE_GUARD__POLICY": "off"})
    # Seed 1 picks "blue": the grid's infotext then reads "a blue circle", where the S/R value 'red' is not found.
    assert expand("a {red|blue} circle", 1, Wildcards(gf_home / "wildcards")) == "a blue circle"
    code, out, err = call("generate", "a {red|blue} circle", "-m", "tiny-sd", "--steps", "1", "--width", "32",
                          "--height", "32", "--seed", "1", "--script", "x/y/z plot",
                          "--script-arg", "x=Prompt S/R=red,green")
    assert code == 0, err
    grid = out.strip().splitlines()[0].split()[0]
    code, out, err = call("generate", "--from-png", grid)
    assert code == 0, err
    again = out.strip().splitlines()[0].split()[0]
    assert "txt2img-grids" in again and again != grid
    assert np.array_equal(pixels(Image.open(grid)), pixels(Image.open(again)))
