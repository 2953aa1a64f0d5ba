"""The X/Y/Z plot through real clients on the shared live server: webuiapi's txt2img with A1111's script_name and
positional script_args, the refusal of an axis guardforge cannot run, and the web UI's XYZ plot tab through
Gradio's own client."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from guardforge.a1111.xyz import axis_labels

SIZE = 32
AXES = axis_labels()


def script_args(x_type, x_values, y_type="Nothing", y_values="", include_lone_images=True):
    # A1111 1.10's layout: three (type, values, dropdown) triples, then the options.
    return [AXES.index(x_type), x_values, [], AXES.index(y_type), y_values, [], 0, "", [],
            True, include_lone_images, False, False, 0, False, False]


def test_webuiapi_runs_the_xyz_plot_script(shared_server):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=shared_server.port, sampler="Euler a", steps=2)
    assert "x/y/z plot" in api.get_scripts()["txt2img"]
    result = api.txt2img(prompt="a red square", seed=11, width=SIZE, height=SIZE, script_name="X/Y/Z plot",
                         script_args=script_args("CFG Scale", "1, 7", "Prompt S/R", "red, green"))
    grid, *cells = result.images
    assert len(cells) == 4  # include_lone_images: the grid, then each cell in grid order
    info = result.info
    assert "X Type: CFG Scale" in info["infotexts"][0] and 'Y Values: "red, green"' in info["infotexts"][0]
    assert info["infotexts"][1].startswith("a red square\n") and info["infotexts"][3].startswith("a green square\n")
    assert info["all_seeds"] == [11] * 4
    # What each cell read, after the S/R, as a generation's all_prompts are its images' own texts.
    assert info["all_prompts"] == ["a red square"] * 2 + ["a green square"] * 2
    assert "script_args" not in info["guardforge"]["ignored_fields"]
    for index, cell in enumerate(cells):
        ix, iy = index % 2, index // 2
        left, top = grid.width - (2 - ix) * SIZE, grid.height - (2 - iy) * SIZE  # labels pad the top and left
        assert np.array_equal(np.asarray(grid.convert("RGB").crop((left, top, left + SIZE, top + SIZE))),
                              np.asarray(cell.convert("RGB")))


def test_an_axis_guardforge_cannot_run_is_a_422_with_the_reason(shared_server):
    payload = {"prompt": "a square", "steps": 2, "width": SIZE, "height": SIZE, "script_name": "x/y/z plot",
               "script_args": script_args("Sigma Churn", "0, 1")}
    answer = httpx.post(f"{shared_server.url}/sdapi/v1/txt2img", json=payload, timeout=60)
    assert answer.status_code == 422, answer.text
    assert "the X axis 'Sigma Churn' has no equivalent in guardforge" in json.dumps(answer.json())


def test_the_ui_tab_draws_the_grid(shared_server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(f"{shared_server.url}/ui/", verbose=False)
    try:
        form = ("a red square", "", "tiny-sd", "Automatic", "Euler a", "Automatic", 2, 7, SIZE, SIZE, 5)
        progress, grid, cells, infotext = client.predict(
            *form, "Steps", "1-2", "Nothing", "", "Nothing", "", True, False, False, 0, api_name="/xyz_plot")
        assert 'data-state="succeeded"' in progress and len(cells) == 2
        assert "X Type: Steps, X Values: 1-2" in infotext
        assert Image.open(grid).width == 2 * SIZE and Image.open(grid).height > SIZE  # labels above the cells
        with pytest.raises(AppError, match="Prompt S/R did not find 'blue'"):
            client.predict(*form, "Prompt S/R", "blue, green", "Nothing", "", "Nothing", "", True, False, False, 0,
                           api_name="/xyz_plot")
    finally:
        client.close()
