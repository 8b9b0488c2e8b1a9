"""Comparing a report's pages and document with a re-render's (see `pdf_content`): text in reading order, glyph by glyph, drawings, and what a viewer shows besides the pages."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from reef_forensics.report.pdf_content import (
    PLACEMENT_TOLERANCE,
    SIGNATURE_CATALOG_KEYS,
    SIGNATURE_PAGE_KEYS,
    ContentError,
    Glyph,
    Page,
    _get,
    _number,
)


def _reading_order(glyphs: list[Glyph]) -> list[list[Glyph]]:
    """Glyphs as lines, top to bottom, each left to right (by baseline origin)."""
    lines: list[list[Glyph]] = []
    for glyph in sorted(glyphs, key=lambda g: (-g.y, g.x)):
        if lines and abs(lines[-1][0].y - glyph.y) <= 1.0:
            lines[-1].append(glyph)
        else:
            lines.append([glyph])
    return [sorted(line, key=lambda g: g.x) for line in lines]


@dataclass
class _Reading:
    """A page's glyphs in reading order: those compared (inked, or with text that is not white
    space), and for each the line it belongs to."""

    glyphs: list[Glyph]
    lines: list[str]
    line_of: list[int]
    positions: list[int]  # offset of each compared glyph's line text

    @classmethod
    def of(cls, page: Page) -> _Reading:
        glyphs: list[Glyph] = []
        lines: list[str] = []
        line_of: list[int] = []
        positions: list[int] = []
        for line in _reading_order(page.glyphs):
            text, end = "", line[0].x
            for glyph in line:
                if glyph.x - end > 0.3 * glyph.size and not text.endswith(" "):
                    text += " "  # a gap with no space glyph: table cells, margin boxes
                if glyph.inked or glyph.text.strip():
                    glyphs.append(glyph)
                    line_of.append(len(lines))
                    positions.append(len(text))
                text += glyph.text
                end = glyph.x + glyph.advance
            lines.append(text)
        return cls(glyphs, lines, line_of, positions)

    def compact(self) -> tuple[str, list[int]]:
        """The compared text without white space, and the glyph each character comes from."""
        chars, owner = [], []
        for index, glyph in enumerate(self.glyphs):
            for char in glyph.text:
                if not char.isspace():
                    chars.append(char)
                    owner.append(index)
        return "".join(chars), owner

    def excerpt(self, index: int) -> str:
        """The line of glyph ``index`` around it, as text."""
        if not self.glyphs:
            return ""
        index = min(index, len(self.glyphs) - 1)
        line = " ".join(self.lines[self.line_of[index]].split())
        at = len(" ".join(self.lines[self.line_of[index]][: self.positions[index]].split()))
        start = max(0, at - 40)
        text = line[start : start + 90]
        return ("..." if start else "") + text + ("..." if start + 90 < len(line) else "")


def page_lines(page: Page) -> list[str]:
    """A page's text as lines, in reading order."""
    return _Reading.of(page).lines


@dataclass
class Differences:
    """Per check, the first difference on each page that has one ("page N: ...")."""

    text: list[str] = field(default_factory=list)
    placement: list[str] = field(default_factory=list)
    look: list[str] = field(default_factory=list)
    drawings: list[str] = field(default_factory=list)


def compare_pages(shown: list[Page], expected: list[Page], *, drawings: bool) -> Differences:
    """The report's pages (``shown``) against the re-render's (``expected``). With ``drawings``
    every path, picture and shading is compared; without, only the pictures."""
    out = Differences()
    if len(shown) != len(expected):
        out.text.append(
            f"the report has {len(shown)} pages; the attached findings render to {len(expected)}"
        )
    for number, (page, reference) in enumerate(zip(shown, expected, strict=False), start=1):
        seen, wanted = _Reading.of(page), _Reading.of(reference)
        text_problem = _text_difference(seen, wanted)
        if text_problem:
            out.text.append(f"page {number}: {text_problem}")
        else:
            placement, look = _glyph_differences(seen, wanted)
            if placement:
                out.placement.append(f"page {number}: {placement}")
            if look:
                out.look.append(f"page {number}: {look}")
        drawing = _drawing_difference(page, reference, every=drawings)
        if drawing:
            out.drawings.append(f"page {number}: {drawing}")
    return out


def _text_difference(seen: _Reading, wanted: _Reading) -> str:
    shown_text, shown_owner = seen.compact()
    wanted_text, wanted_owner = wanted.compact()
    if shown_text == wanted_text:
        return ""
    at = next(
        (i for i, (a, b) in enumerate(zip(shown_text, wanted_text, strict=False)) if a != b),
        min(len(shown_text), len(wanted_text)),
    )
    shows = seen.excerpt(shown_owner[at]) if at < len(shown_owner) else "(nothing more)"
    gives = wanted.excerpt(wanted_owner[at]) if at < len(wanted_owner) else "(nothing more)"
    if at >= len(wanted_text):
        return f'it shows "{shows}" where the attached findings give nothing more'
    return f'it shows "{shows}" where the attached findings give "{gives}"'


def _glyph_differences(seen: _Reading, wanted: _Reading) -> tuple[str, str]:
    placement = look = ""
    if len(seen.glyphs) != len(wanted.glyphs):
        index = next(
            (
                i
                for i, (a, b) in enumerate(zip(seen.glyphs, wanted.glyphs, strict=False))
                if a.text != b.text
            ),
            min(len(seen.glyphs), len(wanted.glyphs)),
        )
        return (
            f'the glyphs of "{seen.excerpt(index)}" are not the ones the templates draw '
            f"({len(seen.glyphs)} glyphs where the templates draw {len(wanted.glyphs)})",
            "",
        )
    for index, (glyph, reference) in enumerate(zip(seen.glyphs, wanted.glyphs, strict=True)):
        where = f'"{glyph.text}" in "{seen.excerpt(index)}"'
        if not placement:
            if glyph.font != reference.font or abs(glyph.size - reference.size) > 0.02 * max(
                reference.size, 1.0
            ):
                placement = (
                    f"{where} is set in {glyph.font} at {glyph.size:.2f} pt where the templates "
                    f"use {reference.font} at {reference.size:.2f} pt"
                )
            elif abs(glyph.scale - reference.scale) > 0.02:
                placement = (
                    f"{where} is stretched to {glyph.scale:.0%} of its width where the "
                    f"templates draw it at {reference.scale:.0%}"
                )
            elif (
                abs(glyph.x - reference.x) > PLACEMENT_TOLERANCE
                or abs(glyph.y - reference.y) > PLACEMENT_TOLERANCE
            ):
                placement = (
                    f"{where} is drawn at ({glyph.x:.1f}, {glyph.y:.1f}) where the templates "
                    f"place it at ({reference.x:.1f}, {reference.y:.1f})"
                )
            elif glyph.shape != reference.shape:
                placement = (
                    f"{where} is drawn with another shape than the font gives that character "
                    "(the font program or its character map was altered)"
                )
        if not look and glyph.inked:
            differences = glyph.look.differences(reference.look)
            if glyph.hidden != reference.hidden:
                differences.append(glyph.hidden or "visible where the templates hide it")
            if differences:
                look = f"{where} is drawn " + "; ".join(differences)
        if placement and look:
            break
    return placement, look


def _drawing_difference(page: Page, reference: Page, *, every: bool) -> str:
    kinds = None if every else {"picture"}
    shown = [p for p in page.paints if kinds is None or p.kind in kinds]
    wanted = [p for p in reference.paints if kinds is None or p.kind in kinds]
    what = "drawings" if every else "pictures"
    for index, (paint, expected) in enumerate(zip(shown, wanted, strict=False), start=1):
        if paint.detail != expected.detail:
            return (
                f"{what[:-1]} {index} differs: the report draws {paint.describe()} where the "
                f"templates draw {expected.describe()}"
            )
    if len(shown) != len(wanted):
        extra = shown[len(wanted)] if len(shown) > len(wanted) else None
        return f"the report draws {len(shown)} {what} where the templates draw {len(wanted)}" + (
            f" (the first one more: {extra.describe()})" if extra is not None else ""
        )
    return ""


def _outline(reader: Any) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []

    def walk(items: Any) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
            else:
                try:
                    number = reader.get_destination_page_number(item)
                except Exception:  # a destination that names no page
                    number = -1
                out.append((str(item.title), number))

    walk(reader.outline)
    return out


def _metadata(reader: Any) -> dict[str, str]:
    values: dict[str, str] = {}
    info = reader.metadata or {}
    for key in ("/Title", "/Author", "/Subject", "/Keywords"):
        if key in info:
            values["info " + key] = str(info[key])
    xmp = reader.xmp_metadata
    if xmp is not None:
        for name in ("dc_title", "dc_creator", "dc_description", "dc_subject", "pdf_keywords"):
            value = getattr(xmp, name, None)
            if value:
                values["xmp " + name] = repr(value)
    return values


def _attachments(reader: Any) -> list[tuple[str, str, bytes]]:
    """The embedded files as a viewer lists them: name, description, bytes, in order (a name
    given twice is listed twice)."""
    embedded = _get(_get(reader.root_object, "/Names", {}), "/EmbeddedFiles", {})
    if "/Kids" in embedded:
        raise ContentError("the attachments' name tree has kids, which the renderer never writes")
    names = _get(embedded, "/Names", [])
    return [
        (
            str(names[i]),
            str(_get(names[i + 1].get_object(), "/Desc", "")),
            bytes(names[i + 1].get_object()["/EF"]["/F"].get_object().get_data()),
        )
        for i in range(0, len(names) - 1, 2)
    ]


def _annotations(page: Any) -> Iterator[Any]:
    for annotation in _get(page, "/Annots", None) or []:
        yield annotation.get_object()


def _is_hidden_signature(annotation: Any) -> bool:
    """The signature field's widget as pyHanko adds it: no area, so nothing to see."""
    field_type = _get(annotation, "/FT") or _get(_get(annotation, "/Parent", {}), "/FT")
    rect = [_number(v) for v in _get(annotation, "/Rect", [0, 0, 0, 0])]
    flat = abs(rect[2] - rect[0]) < 1e-6 or abs(rect[3] - rect[1]) < 1e-6
    hidden = bool(int(_get(annotation, "/F", 0)) & 0b10)  # the Hidden flag
    return _get(annotation, "/Subtype") == "/Widget" and field_type == "/Sig" and (flat or hidden)


def compare_documents(shown: Any, expected: Any) -> list[str]:
    """What a viewer shows besides the pages, against the re-render: the catalog's entries (no
    actions, scripts, optional content, page labels or portfolio the templates do not make),
    annotations (only the signature's, which has no area), bookmarks, title and metadata,
    attachments (names, descriptions and bytes), and the page boxes."""
    problems: list[str] = []
    root, reference_root = shown.root_object, expected.root_object
    extra = sorted(set(root) - set(reference_root) - SIGNATURE_CATALOG_KEYS)
    if extra:
        problems.append(f"the document carries {', '.join(extra)}, which the templates never make")
    form = _get(root, "/AcroForm")
    if form is not None and "/AcroForm" not in reference_root:
        if "/XFA" in form:
            problems.append("the document carries an XFA form, which a viewer may show instead")
        for field_ in _get(form, "/Fields", []) or []:
            if _get(field_.get_object(), "/FT") != "/Sig":
                problems.append("the document carries a form field besides the signature's")
                break
    names, reference_names = _get(root, "/Names", {}), _get(reference_root, "/Names", {})
    extra = sorted(set(names) - set(reference_names))
    if extra:
        problems.append(f"the document's name tree carries {', '.join(extra)}")
    if _get(root, "/Outlines") is not None and _outline(shown) != _outline(expected):
        problems.append(
            "its bookmarks are not the templates' ("
            + "; ".join(t for t, _ in _outline(shown)[:3])
            + ")"
        )
    metadata, reference_metadata = _metadata(shown), _metadata(expected)
    for key in sorted(set(metadata) | set(reference_metadata)):
        if metadata.get(key) != reference_metadata.get(key):
            problems.append(
                f"its metadata {key} is {metadata.get(key, 'absent')} where the templates write "
                f"{reference_metadata.get(key, 'nothing')}"
            )
    attached, reference_attached = _attachments(shown), _attachments(expected)
    if [a[0] for a in attached] != [a[0] for a in reference_attached]:
        problems.append(
            "it lists the attachments "
            + (", ".join(a[0] for a in attached) or "none")
            + " where the report carries "
            + ", ".join(a[0] for a in reference_attached)
        )
    else:
        for mine, theirs in zip(attached, reference_attached, strict=True):
            if mine != theirs:
                problems.append(f"its attachment {mine[0]} is described or filled otherwise")
    problems.extend(_page_problems(shown, expected))
    return problems


def _page_problems(shown: Any, expected: Any) -> list[str]:
    """Each page against the re-render's: its entries, its boxes and its annotations."""
    problems: list[str] = []
    for number, (page, reference) in enumerate(
        zip(shown.pages, expected.pages, strict=False), start=1
    ):
        extra = sorted(set(page) - set(reference) - SIGNATURE_PAGE_KEYS)
        if extra:
            problems.append(f"page {number} carries {', '.join(extra)}")
        for box in (
            "/MediaBox",
            "/CropBox",
            "/TrimBox",
            "/BleedBox",
            "/ArtBox",
            "/Rotate",
            "/UserUnit",
        ):
            mine, theirs = _get(page, box), _get(reference, box)
            if (mine is None) != (theirs is None) or (
                mine is not None
                and [round(_number(v), 2) for v in (mine if isinstance(mine, list) else [mine])]
                != [
                    round(_number(v), 2) for v in (theirs if isinstance(theirs, list) else [theirs])
                ]
            ):
                problems.append(f"page {number} has another {box.lstrip('/')} than the templates'")
        reference_annotations = [
            (str(_get(a, "/Subtype")), [round(_number(v)) for v in _get(a, "/Rect", [])])
            for a in _annotations(reference)
        ]
        for annotation in _annotations(page):
            if _is_hidden_signature(annotation):
                continue
            described = (
                str(_get(annotation, "/Subtype")),
                [round(_number(v)) for v in _get(annotation, "/Rect", [])],
            )
            if described not in reference_annotations or "/AP" in annotation:
                problems.append(
                    f"page {number} carries a {described[0].lstrip('/')} annotation the templates "
                    "do not make"
                )
                break
    return problems
