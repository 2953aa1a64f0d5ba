"""Grid images as A1111 draws them: cells in rows and columns, labels above the columns and left of the rows."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

LABEL_COLOR = (0, 0, 0)
BACKGROUND = "white"
# Below this the labels of a small (64 px) model's cells could not be read; A1111's (w + h) // 25 gives 5 there.
MIN_FONT_SIZE = 10


def font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans, A1111's grid font, where the system has it (Pillow looks in the system's font folders);
    else Pillow's own scalable default."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> list[str]:
    """Words on lines no wider than `width` (a word wider than that keeps a line to itself)."""
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=face) <= width or not lines[-1]:
            lines[-1] = line
        else:
            lines.append(word)
    return [line for line in lines if line]


class _Labels:
    """Labels wrapped to the width they may take, with the height each block of lines needs."""

    def __init__(self, texts: list[str], width: int, size: int):
        self.size = size
        self.width = max(width, 1)
        self.face = font(size)
        self.spacing = size // 2
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        self.lines = [_wrap(measure, text, self.face, max(width, 1)) for text in texts]
        self.line_height = sum(abs(v) for v in self.face.getmetrics())
        self.heights = [len(lines) * self.line_height + max(len(lines) - 1, 0) * self.spacing
                        for lines in self.lines]

    @property
    def empty(self) -> bool:
        return not any(self.lines)

    def draw(self, draw: ImageDraw.ImageDraw, index: int, centre_x: float, top: float) -> None:
        y = top
        for line in self.lines[index]:
            # A word wider than its room is drawn smaller, as A1111 does, so that it never covers a cell.
            face, size = self.face, self.size
            while size > 1 and draw.textlength(line, font=face) > self.width:
                size -= 1
                face = font(size)
            draw.text((centre_x, y + self.line_height / 2), line, font=face, fill=LABEL_COLOR, anchor="mm")
            y += self.line_height + self.spacing


def draw_grid(cells: list[Image.Image | None], columns: int, rows: int, column_labels: list[str],
              row_labels: list[str], margin: int = 0, legend: bool = True,
              cell_size: tuple[int, int] | None = None) -> Image.Image:
    """`cells` row by row (None: a cell that was not made, left black as A1111 leaves it), each centred in a
    slot of `cell_size` (default: the largest cell), `margin` pixels apart; with `legend`, the column labels
    above and the row labels to the left, wrapped to the slot's width (rows: to 3/4 of it, A1111's pad)."""
    if len(cells) != columns * rows:
        raise ValueError(f"{len(cells)} cells do not fill {columns} x {rows}")
    width, height = cell_size or (max((c.width for c in cells if c is not None), default=64),
                                  max((c.height for c in cells if c is not None), default=64))
    size = max(MIN_FONT_SIZE, (width + height) // 25)
    top_labels = _Labels(column_labels if legend else [], width, size)
    left_width = width * 3 // 4
    left_labels = _Labels(row_labels if legend else [], left_width, size)
    pad_left = 0 if left_labels.empty else left_width
    pad_top = 0 if top_labels.empty else max(top_labels.heights) + top_labels.spacing * 2
    image = Image.new("RGB", (pad_left + columns * width + margin * (columns - 1),
                              pad_top + rows * height + margin * (rows - 1)), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        x, y = pad_left + column * (width + margin), pad_top + row * (height + margin)
        if cell is None:
            draw.rectangle((x, y, x + width - 1, y + height - 1), fill=(0, 0, 0))
            continue
        image.paste(cell.convert("RGB"), (x + (width - cell.width) // 2, y + (height - cell.height) // 2))
    if not top_labels.empty:
        for column in range(columns):
            centre = pad_left + column * (width + margin) + width / 2
            top_labels.draw(draw, column, centre, (pad_top - top_labels.heights[column]) / 2)
    if not left_labels.empty:
        for row in range(rows):
            top = pad_top + row * (height + margin) + (height - left_labels.heights[row]) / 2
            left_labels.draw(draw, row, pad_left / 2, top)
    return image


def side_by_side(grids: list[Image.Image], titles: list[str], legend: bool = True) -> Image.Image:
    """Z's sub-grids in one row, each under its title (A1111's z grid); one grid without a title is itself."""
    if len(grids) == 1 and not (legend and titles and titles[0]):
        return grids[0]
    width = max(grid.width for grid in grids)
    height = max(grid.height for grid in grids)
    return draw_grid(list(grids), len(grids), 1, titles, [""], legend=legend, cell_size=(width, height))
