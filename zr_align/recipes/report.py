"""Figures and pages of the demo report: a labelled sample grid, training curves and per-attribute bars drawn
with Pillow (no plotting library), `report.md` beside them and a self-contained `report.html` (figures embedded
as data URIs; its only links point at files beside it)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

ARM_COLORS = [(110, 110, 110), (52, 101, 196), (222, 110, 30), (40, 150, 80), (150, 60, 160)]
_INK, _GRID, _WHITE = (30, 30, 30), (225, 225, 225), (255, 255, 255)
_GOOD, _BAD = (30, 130, 60), (200, 40, 40)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's bundled FreeType font: the same on every machine


def _wrap(text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return lines + [line] if line else lines


def sample_grid(rows: dict[str, np.ndarray], prompts: list[str], notes: dict[str, list[tuple[str, bool]]],
                path, scale: int = 2) -> Path:
    """One row per arm (its name on the left), one column per prompt (written under the column); under each image
    the judge's note `(text, ok)` in green or red. `rows`: name -> uint8 `(C, H, W, 3)` images."""
    from PIL import Image, ImageDraw

    name_font, note_font, prompt_font = _font(15), _font(11), _font(12)
    columns, side = len(prompts), next(iter(rows.values())).shape[1] * scale
    cell_w, note_h, label_w, pad = side + 12, 16, 130, 8
    wrapped = [_wrap(p, prompt_font, cell_w - 6) for p in prompts]
    prompt_h = 16 * max(len(w) for w in wrapped) + pad
    grid = Image.new("RGB", (label_w + columns * cell_w + pad, pad + len(rows) * (side + note_h + 6) + prompt_h),
                     _WHITE)
    draw = ImageDraw.Draw(grid)
    for r, (name, images) in enumerate(rows.items()):
        top = pad + r * (side + note_h + 6)
        draw.text((pad, top + side // 2 - 9), name, font=name_font, fill=_INK)
        for c, image in enumerate(images):
            left = label_w + c * cell_w
            tile = Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST)
            grid.paste(tile, (left, top))
            text, ok = notes[name][c]
            draw.text((left, top + side + 2), text, font=note_font, fill=_GOOD if ok else _BAD)
    bottom = pad + len(rows) * (side + note_h + 6)
    for c, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            draw.text((label_w + c * cell_w, bottom + 16 * k), line, font=prompt_font, fill=_INK)
    grid.save(path)
    return Path(path)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step), default=step)
    return [k * step for k in range(math.floor(low / step), math.ceil(high / step) + 1)]


def line_chart(series: list[dict], title: str, y_range: tuple[float, float] | None = None, size=(600, 320)):
    """A Pillow line chart over training steps. `series`: dicts with `label`, `x`, `y`, `color` and optional
    `markers` (dots at the points) and `width`; `y_range` fixes the y axis (default: the data's)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, _WHITE)
    draw, font = ImageDraw.Draw(image), _font(12)
    left, top, right, bottom = 58, 30, size[0] - 12, size[1] - 62
    xs = [x for s in series for x in s["x"]]
    ys = [y for s in series for y in s["y"] if y is not None]
    y_ticks = _ticks(*(y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))))
    x_low, x_high = (min(xs), max(xs)) if xs and max(xs) > min(xs) else (0, 1)
    y_low, y_high = y_ticks[0], y_ticks[-1] if y_ticks[-1] > y_ticks[0] else y_ticks[0] + 1

    def at(x, y):
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    for y in y_ticks:
        draw.line([at(x_low, y), at(x_high, y)], fill=_GRID)
        draw.text((left - 6, at(x_low, y)[1]), f"{y:g}", font=font, fill=_INK, anchor="rm")
    for x in _ticks(x_low, x_high):
        if x_low <= x <= x_high:
            draw.text((at(x, y_low)[0], bottom + 4), f"{x:g}", font=font, fill=_INK, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text((left, 8), title, font=_font(14), fill=_INK)
    draw.text(((left + right) // 2, bottom + 20), "training step", font=font, fill=_INK, anchor="mt")
    legend_x = left
    for s in series:
        points = [at(x, y) for x, y in zip(s["x"], s["y"]) if y is not None]
        if len(points) > 1:
            draw.line(points, fill=s["color"], width=s.get("width", 2))
        for px, py in points if s.get("markers") else []:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=s["color"])
        draw.line([(legend_x, size[1] - 14), (legend_x + 16, size[1] - 14)], fill=s["color"], width=3)
        draw.text((legend_x + 20, size[1] - 14), s["label"], font=font, fill=_INK, anchor="lm")
        legend_x += 30 + int(font.getlength(s["label"]))
    return image


def attribute_bars(accuracy: dict[str, dict], path, size=(640, 320)) -> Path:
    """Grouped bars: per attribute (and all four), one bar per arm with its 95% interval as a whisker.
    `accuracy`: arm -> attribute -> {"value", "low", "high"}."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, _WHITE)
    draw, font = ImageDraw.Draw(image), _font(12)
    groups = list(next(iter(accuracy.values())))
    left, top, right, bottom = 44, 30, size[0] - 12, size[1] - 62
    draw.text((left, 8), "Judge accuracy on the held-out prompts (95% intervals over prompts)", font=_font(14),
              fill=_INK)
    for y in (0.0, 0.25, 0.5, 0.75, 1.0):
        py = bottom - y * (bottom - top)
        draw.line([(left, py), (right, py)], fill=_GRID)
        draw.text((left - 6, py), f"{y:g}", font=font, fill=_INK, anchor="rm")
    group_w = (right - left) / len(groups)
    bar_w = group_w * 0.8 / len(accuracy)
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for a, (arm, values) in enumerate(accuracy.items()):
            v = values[group]
            bx = x0 + a * bar_w
            color = ARM_COLORS[a % len(ARM_COLORS)]
            draw.rectangle([bx + 1, bottom - v["value"] * (bottom - top), bx + bar_w - 1, bottom], fill=color)
            cx = bx + bar_w / 2
            y_low, y_high = (bottom - v[k] * (bottom - top) for k in ("low", "high"))
            draw.line([(cx, y_low), (cx, y_high)], fill=_INK, width=1)
            draw.line([(cx - 3, y_low), (cx + 3, y_low)], fill=_INK)
            draw.line([(cx - 3, y_high), (cx + 3, y_high)], fill=_INK)
        draw.text((left + (g + 0.5) * group_w, bottom + 4), group.replace("all_correct", "all four"), font=font,
                  fill=_INK, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=_INK)
    legend_x = left
    for a, arm in enumerate(accuracy):
        draw.rectangle([legend_x, size[1] - 20, legend_x + 12, size[1] - 8], fill=ARM_COLORS[a % len(ARM_COLORS)])
        draw.text((legend_x + 16, size[1] - 14), arm, font=font, fill=_INK, anchor="lm")
        legend_x += 32 + int(font.getlength(arm))
    image.save(path)
    return Path(path)


def training_curves(curves: dict[str, list[dict]], reward_steps: list[dict], path) -> Path:
    """Two charts side by side: the reward model's mean (training batches of the reward arm, smoothed, and every
    arm's validation samples at each checkpoint), and the judge's all-four-correct rate on the validation
    prompts at each checkpoint. `curves`: arm -> [{"step", "reward_mean", "all_correct"}]."""
    from PIL import Image

    colors = {arm: ARM_COLORS[(i + 1) % len(ARM_COLORS)] for i, arm in enumerate(curves)}
    reward_series = []
    batches = [(m["step"], m["reward_mean"]) for m in reward_steps if m.get("reward_mean") is not None]
    if batches:
        window = 10
        smooth = [float(np.mean([r for _, r in batches[max(0, i - window + 1): i + 1]])) for i in range(len(batches))]
        reward_series.append({"label": "training batches (run's weights)", "x": [s for s, _ in batches],
                              "y": smooth, "color": (245, 180, 130), "width": 1})
    for arm, points in curves.items():
        reward_series.append({"label": arm, "x": [p["step"] for p in points],
                              "y": [p["reward_mean"] for p in points], "color": colors[arm], "markers": True})
    judge_series = [{"label": arm, "x": [p["step"] for p in points], "y": [p["all_correct"] for p in points],
                     "color": colors[arm], "markers": True} for arm, points in curves.items()]
    left = line_chart(reward_series, "Reward-model mean reward (validation prompts)")
    right = line_chart(judge_series, "Judge: all four attributes right (validation prompts)", y_range=(0.0, 1.0))
    figure = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), _WHITE)
    figure.paste(left, (0, 0))
    figure.paste(right, (left.width, 0))
    figure.save(path)
    return Path(path)


def markdown_to_html(markdown: str, figures: dict[str, Path], title: str) -> str:
    """A self-contained page from the report's Markdown subset (headings, paragraphs, tables, `![alt](file)`
    figures, `[text](file)` links, `**bold**`, `` `code` ``): figures are embedded as PNG data URIs."""
    import re

    def inline(text: str) -> str:
        text = html.escape(text, quote=False)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
        return re.sub(r"\[(.+?)\]\((.+?)\)", lambda m: f'<a href="{html.escape(m[2])}">{m[1]}</a>', text)

    def cell(text: str) -> str:
        """A table cell; an interval `value [low, high]` goes on a second, smaller line (narrow columns)."""
        return re.sub(r" (\[[^\]]+\])$", r"<br><small>\1</small>", inline(text))

    body, table, paragraph, items = [], [], [], []

    def flush() -> None:
        if paragraph:
            body.append(f"<p>{inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
            items.clear()
        if table:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table if "---" not in row]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            rows = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in cells[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            table.clear()

    for line in markdown.splitlines():
        figure = re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip())
        if not line.strip() or line.startswith("#") or figure or line.startswith("|") != bool(table):
            flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif figure:
            data = base64.b64encode(Path(figures[figure[2]]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(figure[1])}">'
                        f"<figcaption>{inline(figure[1])}</figcaption></figure>")
        elif line.startswith("|"):
            table.append(line)
        elif line.startswith("- "):
            if paragraph:
                flush()
            items.append(line[2:].strip())
        elif line.strip():
            paragraph.append(line.strip())
    flush()
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#1e1e1e}"
             "table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;white-space:nowrap;text-align:right}small{color:#666}"
             "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{color:#555}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
