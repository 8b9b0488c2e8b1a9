"""What a report's pages show, read the way a viewer draws them, and compared with a re-render.

`verify report.pdf` re-renders the report from what the file carries (the signed findings, the
victim's manifest, the report record, the signer's certificate) and compares the two documents
here. Text is not read with a text extractor, which returns what a font's /ToUnicode map claims
whatever is drawn: every page's content stream (and every form it draws) is interpreted, and each
glyph is recorded with

- the text its font maps it to, and the shape it is drawn with (the outline in the embedded font
  program), so that a font whose outlines or /ToUnicode map were altered is caught;
- where it is drawn, at what size and in which font;
- how it is drawn: render mode (3 is invisible), fill and stroke colour, opacity, soft mask,
  blend mode, transfer function, optional content; and whether it lies outside the page,
  outside its clipping area, or under something opaque drawn later.

`compare_pages` then asks, page by page, that the report's glyphs are the re-render's: the same
text in reading order, at the same places, in the same fonts, sizes and shapes, drawn the same
way. Each answer names the page and the text. Drawings (paths, pictures) are compared one by one
when the report and the re-render come from the same renderer versions; with other versions only
the pictures are compared, as the same layout may be drawn with other path operators.
`compare_documents` covers what a viewer shows besides the pages: annotations, bookmarks, title
and other metadata, attachments, actions and optional content.

Whatever the file holds, reading it is a `ContentError` (a failed check), never a crash.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reef_forensics.report.pdf_fonts import Font

#: A 2-D affine matrix as PDF writes it: [a b c d e f], points as row vectors (p' = p x M).
Matrix = tuple[float, float, float, float, float, float]
Box = tuple[float, float, float, float]
IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
#: How far apart (points) a glyph may be placed from where the re-render places it.
PLACEMENT_TOLERANCE = 0.5
#: Limits on what is read: nested forms, and operators per document.
MAX_FORM_DEPTH = 12
MAX_OPERATIONS = 2_000_000
MAX_FONT_ENTRIES = 1 << 20  # character-map and width entries read per font
#: What a re-render's catalog and pages lack but a signed report's have: the signature.
SIGNATURE_CATALOG_KEYS = frozenset({"/AcroForm", "/Perms", "/DSS", "/Extensions"})
SIGNATURE_PAGE_KEYS = frozenset({"/Annots"})
_SUBSET_TAG = re.compile(r"^[A-Z]{6}\+")
_RENDER_MODES = {
    0: "fill",
    1: "stroke",
    2: "fill and stroke",
    3: "invisible",
    4: "fill, clip",
    5: "stroke, clip",
    6: "fill and stroke, clip",
    7: "invisible, clip",
}


class ContentError(ValueError):
    """The PDF draws something this reader does not follow, or is malformed there."""


def _mul(m: Matrix, n: Matrix) -> Matrix:
    """``m`` then ``n``."""
    a, b, c, d, e, f = m
    p, q, r, s, t, u = n
    return (
        a * p + b * r,
        a * q + b * s,
        c * p + d * r,
        c * q + d * s,
        e * p + f * r + t,
        e * q + f * s + u,
    )


def _apply(m: Matrix, x: float, y: float) -> tuple[float, float]:
    return (x * m[0] + y * m[2] + m[4], x * m[1] + y * m[3] + m[5])


def _box_of(points: list[tuple[float, float]]) -> Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def _intersect(a: Box, b: Box) -> Box:
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _inside(box: Box, x: float, y: float, slack: float = 0.0) -> bool:
    return box[0] - slack <= x <= box[2] + slack and box[1] - slack <= y <= box[3] + slack


def _get(dictionary: Any, key: str, default: Any = None) -> Any:
    """A PDF dictionary's entry, indirect references followed (pypdf's ``get`` does not)."""
    try:
        return dictionary[key] if key in dictionary else default  # noqa: SIM401
    except Exception:  # a malformed dictionary or a dangling reference
        raise ContentError(f"the entry {key} cannot be read") from None


def _r(value: float) -> float:
    """Coordinates as compared: to a hundredth of a point (what PDF writers print)."""
    return round(value, 2) + 0.0


# --- what is recorded --------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """How a glyph is drawn, besides where and with which shape."""

    mode: int
    fill: tuple[Any, ...]
    stroke: tuple[Any, ...]
    fill_alpha: float
    stroke_alpha: float
    soft_mask: bool
    blend: str
    transfer: bool
    optional: bool

    def differences(self, other: Look) -> list[str]:
        """What ``self`` does that ``other`` does not, in words."""
        out = []
        if self.mode != other.mode:
            out.append(
                f"in text render mode {self.mode} ({_RENDER_MODES.get(self.mode, '?')}) where the "
                f"templates use {other.mode} ({_RENDER_MODES.get(other.mode, '?')})"
            )
        if self.fill != other.fill and self.mode in (0, 2, 4, 6):
            out.append(f"in {_colour(self.fill)} where the templates use {_colour(other.fill)}")
        if self.stroke != other.stroke and self.mode in (1, 2, 5, 6):
            out.append(
                f"outlined in {_colour(self.stroke)} where the templates use {_colour(other.stroke)}"
            )
        if (self.fill_alpha, self.stroke_alpha) != (other.fill_alpha, other.stroke_alpha):
            out.append(
                f"at opacity {self.fill_alpha:g}/{self.stroke_alpha:g} where the templates use "
                f"{other.fill_alpha:g}/{other.stroke_alpha:g}"
            )
        if self.soft_mask != other.soft_mask:
            out.append("through a soft mask" if self.soft_mask else "without the templates' mask")
        if self.blend != other.blend:
            out.append(f"with blend mode {self.blend} where the templates use {other.blend}")
        if self.transfer != other.transfer:
            out.append("through a transfer function" if self.transfer else "without one")
        if self.optional != other.optional:
            out.append("as optional content a viewer may hide" if self.optional else "as fixed")
        return out


def _colour(value: tuple[Any, ...]) -> str:
    kind, *components = value
    return (
        f"{kind}({', '.join(f'{c:.3f}' if isinstance(c, float) else str(c) for c in components)})"
    )


@dataclass
class Glyph:
    """One glyph as drawn: its text (from the font's /ToUnicode map), origin on the baseline and
    centre (points, page space), size (the em on the page), horizontal scale, font (without its
    subset tag), shape (digest of its outline, "" when it has none: nothing is drawn), look."""

    text: str
    x: float
    y: float
    cx: float
    cy: float
    size: float
    scale: float
    advance: float
    font: str
    shape: str
    look: Look
    clip: Box
    seq: int
    hidden: str = ""

    @property
    def inked(self) -> bool:
        return bool(self.shape)


@dataclass(frozen=True)
class Paint:
    """One drawing operation: a path filled or stroked, a picture, a shading."""

    kind: str
    box: Box
    detail: tuple[Any, ...]
    opaque: bool
    seq: int

    def describe(self) -> str:
        x0, y0, x1, y1 = self.box
        return f"a {self.kind} over ({x0:.1f}, {y0:.1f})-({x1:.1f}, {y1:.1f})"


@dataclass
class Page:
    box: Box
    glyphs: list[Glyph] = field(default_factory=list)
    paints: list[Paint] = field(default_factory=list)


# --- fonts --------------------------------------------------------------------------------------


# --- the interpreter --------------------------------------------------------------------------


@dataclass
class _State:
    ctm: Matrix = IDENTITY
    clip: Box = (-math.inf, -math.inf, math.inf, math.inf)
    fill_space: str = "gray"
    stroke_space: str = "gray"
    fill: tuple[Any, ...] = ("gray", 0.0)
    stroke: tuple[Any, ...] = ("gray", 0.0)
    line_width: float = 1.0
    dash: tuple[Any, ...] = ()
    cap_join: tuple[Any, ...] = (0, 0, 10.0)
    fill_alpha: float = 1.0
    stroke_alpha: float = 1.0
    soft_mask: bool = False
    blend: str = "Normal"
    transfer: bool = False
    font: Font | None = None
    font_size: float = 0.0
    char_spacing: float = 0.0
    word_spacing: float = 0.0
    horizontal: float = 1.0
    leading: float = 0.0
    rise: float = 0.0
    mode: int = 0

    def copy(self) -> _State:
        return _State(**self.__dict__)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ContentError(f"an operand {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ContentError("an operand is not a finite number")
    return number


def _string(value: Any) -> bytes:
    if isinstance(value, bytes):
        return bytes(value)
    original = getattr(value, "original_bytes", None)
    if isinstance(original, bytes):
        return original
    if isinstance(value, str):
        return value.encode("latin-1", errors="replace")
    raise ContentError("a text operand is not a string")


def _space_kind(space: Any) -> str:
    """A colour space as compared: rgb, gray, cmyk, lab, pattern, or its family's name."""
    space = space.get_object() if hasattr(space, "get_object") else space
    if isinstance(space, str):
        return {
            "/DeviceRGB": "rgb",
            "/RGB": "rgb",
            "/DeviceGray": "gray",
            "/G": "gray",
            "/DeviceCMYK": "cmyk",
            "/CMYK": "cmyk",
            "/Pattern": "pattern",
        }.get(space, space.lstrip("/"))
    if isinstance(space, list) and space:
        family = str(space[0])
        if family == "/ICCBased":
            components = int(_get(space[1].get_object(), "/N", 0))
            return {1: "gray", 3: "rgb", 4: "cmyk"}.get(components, "icc")
        return {"/Lab": "lab", "/CalRGB": "rgb", "/CalGray": "gray", "/Pattern": "pattern"}.get(
            family, family.lstrip("/")
        )
    raise ContentError("a colour space cannot be read")


def _colour_value(kind: str, operands: list[Any]) -> tuple[Any, ...]:
    if kind == "pattern" or any(not isinstance(o, int | float) for o in operands):
        return ("pattern", *(str(o) for o in operands))
    values = [round(_number(o), 3) + 0.0 for o in operands]
    if kind == "gray" and len(values) == 1:
        return ("rgb", values[0], values[0], values[0])
    return (kind, *values)


# --- comparing pages ---------------------------------------------------------------------------


# --- comparing what a viewer shows besides the pages ------------------------------------------
