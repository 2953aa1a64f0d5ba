"""A1111 styles: styles.csv as A1111 writes it, its merge rules and their inverse, against hand-merged prompts."""

from __future__ import annotations

import pytest

from guardforge.engine.styles import apply_styles, extract_styles, merge_prompts, read_styles, styles_files
from guardforge.errors import InvalidRequest

# As A1111 saves it (csv.DictWriter, QUOTE_MINIMAL), with a spreadsheet's BOM, a comment row and an empty row.
STYLES_CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    'cinematic,"{prompt}, cinematic lighting, 35mm","blurry, lowres"\n'
    "# disabled,never,used\n"
    ",,\n"
    "grain,film grain,\n"
    'frame,"a framed picture of {prompt}",\n'
)


@pytest.fixture
def styles(tmp_path):
    (tmp_path / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    return read_styles(styles_files(tmp_path))


def test_the_file_is_read_as_a1111_reads_it(styles):
    assert list(styles) == ["cinematic", "grain", "frame"]  # no BOM in a name; comment and empty rows skipped
    assert styles["cinematic"].prompt == "{prompt}, cinematic lighting, 35mm"
    assert styles["cinematic"].negative_prompt == "blurry, lowres"
    assert styles["grain"].negative_prompt == ""


def test_merge_rules():
    assert merge_prompts("{prompt}, film", "a cat") == "a cat, film"  # the placeholder takes the prompt
    assert merge_prompts("film grain", " a cat ") == "a cat, film grain"  # else appended with ", "
    assert merge_prompts("film grain", "") == "film grain"  # an empty side adds no comma
    assert merge_prompts("", "a cat") == "a cat"
    assert merge_prompts("{prompt} and {prompt}", "x") == "x and x"


def test_several_styles_apply_in_order_to_both_prompts(styles):
    assert apply_styles(styles, ["grain", "cinematic"], "a cat", "") == (
        "a cat, film grain, cinematic lighting, 35mm", "blurry, lowres")
    assert apply_styles(styles, ["cinematic", "frame"], "a cat", "text") == (
        "a framed picture of a cat, cinematic lighting, 35mm", "text, blurry, lowres")


def test_an_unknown_style_is_refused_by_name(styles):
    with pytest.raises(InvalidRequest, match=r"unknown style 'nope'; known styles: cinematic, frame, grain"):
        apply_styles(styles, ["grain", "nope"], "a cat", "")
    with pytest.raises(InvalidRequest, match="styles file is missing or empty"):
        apply_styles({}, ["grain"], "a cat", "")


def test_extra_files_and_the_old_text_column(tmp_path, styles):
    (tmp_path / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    (tmp_path / "styles").mkdir()
    # A1111 before 1.0 wrote `name,text`; a later file's style replaces an earlier one of the same name.
    (tmp_path / "styles" / "old.csv").write_text("name,text\ngrain,heavy grain\nsketch,pencil sketch\n")
    read = read_styles(styles_files(tmp_path))
    assert read["grain"].prompt == "heavy grain" and read["sketch"].prompt == "pencil sketch"
    assert read["cinematic"] == styles["cinematic"]


def test_a_file_that_is_not_a_styles_table_is_named(tmp_path):
    (tmp_path / "styles.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InvalidRequest, match="styles file styles.csv needs a header row with name, prompt"):
        read_styles(styles_files(tmp_path))
    (tmp_path / "styles.csv").write_bytes(b"name,prompt\nfilm,\xff\xfe grain\n")  # not UTF-8 (a cp1252 save)
    with pytest.raises(InvalidRequest, match="styles file styles.csv is not a readable CSV file"):
        read_styles(styles_files(tmp_path))


def test_extraction_gives_back_the_prompts_before_the_styles(styles):
    prompt, negative = apply_styles(styles, ["grain", "cinematic"], "a cat", "text")
    found, original, original_negative = extract_styles(styles, prompt, negative)
    assert (found, original, original_negative) == (["grain", "cinematic"], "a cat", "text")
    # Reapplying what was extracted makes the infotext's prompts again: the styles once, not twice.
    assert apply_styles(styles, found, original, original_negative) == (prompt, negative)
    assert extract_styles(styles, "a dog", "") == ([], "a dog", "")
