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

import hashlib
import io
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

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


def _to_unicode(cmap: bytes) -> dict[int, str]:
    """A /ToUnicode CMap's bfchar and bfrange entries (the forms PDF writers use)."""
    text = cmap.decode("latin-1")
    out: dict[int, str] = {}
    budget = MAX_FONT_ENTRIES

    def utf16(hexdigits: str) -> str:
        raw = bytes.fromhex(hexdigits if len(hexdigits) % 2 == 0 else hexdigits + "0")
        return raw.decode("utf-16-be", errors="replace")

    for block in re.findall(r"beginbfchar(.*?)endbfchar", text, re.S):
        for source, target in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]*)>", block):
            out[int(source, 16)] = utf16(target)
    for block in re.findall(r"beginbfrange(.*?)endbfrange", text, re.S):
        for low, high, rest in re.findall(
            r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*(<[0-9A-Fa-f]*>|\[[^\]]*\])", block
        ):
            start, end = int(low, 16), int(high, 16)
            budget -= end - start + 1
            if not 0 <= start <= end <= 0xFFFF or budget < 0:
                raise ContentError("a /ToUnicode map has ranges beyond two-byte codes, or too many")
            if rest.startswith("["):
                for offset, target in enumerate(re.findall(r"<([0-9A-Fa-f]*)>", rest)):
                    if start + offset <= end:
                        out[start + offset] = utf16(target)
            else:
                base = bytes.fromhex(rest[1:-1]) if len(rest) > 2 else b"\0\0"
                for offset in range(end - start + 1):
                    value = (int.from_bytes(base, "big") + offset) % (1 << (8 * len(base)))
                    out[start + offset] = utf16(value.to_bytes(len(base), "big").hex())
    return out


class Font:
    """A Type 0 font with TrueType outlines (CIDFontType2, Identity-H, /FontFile2): the kind of
    font the report's renderer writes; any other kind is a ContentError."""

    def __init__(self, font: Any) -> None:
        subtype = _get(font, "/Subtype")
        self.name = _SUBSET_TAG.sub("", str(_get(font, "/BaseFont", "")).lstrip("/"))
        if subtype != "/Type0" or _get(font, "/Encoding") != "/Identity-H":
            raise ContentError(
                f"the font {self.name or '?'} is a {str(subtype).lstrip('/')} font with encoding "
                f"{_get(font, '/Encoding')}; the report's renderer writes Type0 Identity-H fonts"
            )
        descendant = font["/DescendantFonts"][0].get_object()
        if _get(descendant, "/Subtype") != "/CIDFontType2":
            raise ContentError(f"the font {self.name} is not a CIDFontType2 font")
        descriptor = descendant["/FontDescriptor"].get_object()
        if "/FontFile2" not in descriptor:
            raise ContentError(f"the font {self.name} carries no TrueType font program")
        self.default_width = float(_get(descendant, "/DW", 1000))
        self.widths = self._widths(_get(descendant, "/W"))
        gid_map = _get(descendant, "/CIDToGIDMap", "/Identity")
        self.gid_map: bytes | None = (
            None if gid_map == "/Identity" else bytes(gid_map.get_object().get_data())
        )
        unicode_map = _get(font, "/ToUnicode")
        self.unicode = (
            _to_unicode(bytes(unicode_map.get_object().get_data()))
            if unicode_map is not None
            else {}
        )
        self._program = bytes(descriptor["/FontFile2"].get_object().get_data())
        self._shapes: dict[int, str] = {}
        self._font: Any = None

    @staticmethod
    def _widths(array: Any) -> dict[int, float]:
        widths: dict[int, float] = {}
        if array is None:
            return widths
        items = list(array.get_object())
        i, budget = 0, MAX_FONT_ENTRIES
        while i < len(items):
            first = int(items[i])
            follower = (
                items[i + 1].get_object() if hasattr(items[i + 1], "get_object") else items[i + 1]
            )
            if isinstance(follower, list):
                budget -= len(follower)
                for offset, width in enumerate(follower):
                    widths[first + offset] = float(width)
                i += 2
            else:
                last, width = int(follower), float(items[i + 2])
                budget -= last - first + 1
                if not 0 <= first <= last <= 0xFFFF or budget < 0:
                    raise ContentError(
                        "the font's widths go beyond two-byte codes, or are too many"
                    )
                for code in range(first, last + 1):
                    widths[code] = width
                i += 3
        return widths

    def width(self, code: int) -> float:
        return self.widths.get(code, self.default_width)

    def shape(self, code: int) -> str:
        """A digest of the outline the code draws ("" when it draws nothing), with the units per
        em and any hinting program, all of which decide what is seen."""
        gid = code
        if self.gid_map is not None:
            if 2 * code + 2 > len(self.gid_map):
                return ""
            gid = int.from_bytes(self.gid_map[2 * code : 2 * code + 2], "big")
        if gid in self._shapes:
            return self._shapes[gid]
        font = self._load()
        glyf = font["glyf"]
        order = font.getGlyphOrder()
        if gid >= len(order):
            digest = f"missing glyph {gid}"  # a viewer draws the font's .notdef box
        else:
            glyph = glyf[order[gid]]
            if glyph.numberOfContours == 0:
                digest = ""
            else:
                coordinates, ends, flags = glyph.getCoordinates(glyf)
                program = getattr(glyph, "program", None)
                payload = repr(
                    (
                        font["head"].unitsPerEm,
                        [tuple(point) for point in coordinates],
                        list(ends),
                        [flag & 1 for flag in flags],
                        program.getBytecode() if program is not None else b"",
                        self._hinting,
                    )
                )
                digest = hashlib.sha256(payload.encode()).hexdigest()[:24]
        self._shapes[gid] = digest
        return digest

    def _load(self) -> Any:
        if self._font is None:
            from fontTools.ttLib import TTFont

            try:
                self._font = TTFont(io.BytesIO(self._program), lazy=True)
                if "glyf" not in self._font:
                    raise ContentError(f"the font {self.name} has no TrueType outlines")
                tables = [t for t in ("fpgm", "prep", "cvt ") if t in self._font]
                self._hinting = hashlib.sha256(
                    b"".join(self._font.getTableData(t) for t in tables)
                ).hexdigest()[:16]
            except ContentError:
                raise
            except Exception as exc:  # a damaged font program is a failed check
                raise ContentError(f"the font program of {self.name} cannot be read") from exc
        return self._font


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


class _Interpreter:
    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.fonts: dict[int, Font] = {}
        self.operations = 0

    def page(self, page: Any) -> Page:
        media = [_number(v) for v in page.mediabox]
        crop = [_number(v) for v in page.cropbox]
        visible = _intersect(
            _box_of([(media[0], media[1]), (media[2], media[3])]),
            _box_of([(crop[0], crop[1]), (crop[2], crop[3])]),
        )
        out = Page(box=visible)
        self._seq = 0
        contents = page.get_contents()
        if contents is not None:
            self._run(contents, _get(page, "/Resources"), _State(), out, depth=0, forms=())
        _mark_hidden(out)
        return out

    def _font(self, resources: Any, name: Any) -> Font:
        fonts = _get(resources, "/Font") if resources is not None else None
        if fonts is None or name not in fonts:
            raise ContentError(f"the font {name} is not among the page's resources")
        reference = fonts.raw_get(name)
        key = getattr(reference, "idnum", None) or id(fonts[name])
        if key not in self.fonts:
            self.fonts[key] = Font(fonts[name].get_object())
        return self.fonts[key]

    def _run(
        self,
        contents: Any,
        resources: Any,
        state: _State,
        page: Page,
        *,
        depth: int,
        forms: tuple[int, ...],
    ) -> None:
        from pypdf.generic import ContentStream

        resources = resources.get_object() if resources is not None else None
        stream = ContentStream(contents, self.reader)
        stack: list[_State] = []
        marked: list[bool] = []
        path: list[tuple[str, tuple[float, ...]]] = []
        points: list[tuple[float, float]] = []
        moved: tuple[float, float] | None = None  # a move not yet followed by a segment
        pending_clip = False
        text_matrix = line_matrix = IDENTITY
        for operands, operator in stream.operations:
            self.operations += 1
            if self.operations > MAX_OPERATIONS:
                raise ContentError(f"the document draws more than {MAX_OPERATIONS} operations")
            op = operator.decode("latin-1") if isinstance(operator, bytes) else str(operator)
            n = operands
            if op == "q":
                stack.append(state.copy())
            elif op == "Q":
                if stack:
                    state = stack.pop()
            elif op == "cm":
                state.ctm = _mul(tuple(_number(v) for v in n[:6]), state.ctm)  # type: ignore[arg-type]
            elif op == "w":
                state.line_width = _number(n[0])
            elif op == "d":
                state.dash = (tuple(_number(v) for v in n[0]), _number(n[1]))
            elif op in ("J", "j", "M"):
                index = "JjM".index(op)
                values = list(state.cap_join)
                values[index] = _number(n[0])
                state.cap_join = tuple(values)
            elif op == "gs":
                self._ext_gstate(resources, n[0], state)
            elif op in ("g", "rg", "k", "G", "RG", "K"):
                kind = {"g": "gray", "rg": "rgb", "k": "cmyk"}[op.lower()]
                value = _colour_value(kind, [_number(v) for v in n])
                if op.islower():
                    state.fill_space, state.fill = kind, value
                else:
                    state.stroke_space, state.stroke = kind, value
            elif op in ("cs", "CS"):
                kind = self._colour_space(resources, n[0])
                initial = _colour_value(kind, [0.0] * {"rgb": 3, "cmyk": 4}.get(kind, 1))
                if kind == "cmyk":
                    initial = ("cmyk", 0.0, 0.0, 0.0, 1.0)
                if op == "cs":
                    state.fill_space, state.fill = kind, initial
                else:
                    state.stroke_space, state.stroke = kind, initial
            elif op in ("sc", "scn", "SC", "SCN"):
                values = [v if not isinstance(v, int | float) else _number(v) for v in n]
                if op.islower():
                    state.fill = _colour_value(state.fill_space, values)
                else:
                    state.stroke = _colour_value(state.stroke_space, values)
            elif op == "m":
                x, y = _apply(state.ctm, _number(n[0]), _number(n[1]))
                path.append(("m", (_r(x), _r(y))))
                moved = (x, y)
            elif op in ("l", "c", "v", "y"):
                coordinates = [_number(v) for v in n]
                pairs = [
                    _apply(state.ctm, coordinates[i], coordinates[i + 1])
                    for i in range(0, len(coordinates) - 1, 2)
                ]
                path.append((op, tuple(_r(c) for p in pairs for c in p)))
                if moved is not None:  # a lone move draws nothing, so it bounds nothing
                    points.append(moved)
                    moved = None
                points.extend(pairs)
            elif op == "h":
                path.append(("h", ()))
            elif op == "re":
                x, y, w, h = (_number(v) for v in n[:4])
                corners = [
                    _apply(state.ctm, px, py)
                    for px, py in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
                ]
                path.append(("re", tuple(_r(c) for p in corners for c in p)))
                points.extend(corners)
                moved = None
            elif op in ("W", "W*"):
                pending_clip = True
            elif op in ("S", "s", "f", "F", "f*", "B", "B*", "b", "b*", "n"):
                if op != "n" and points:
                    self._paint_path(op, path, points, state, page, bool(marked and any(marked)))
                if pending_clip:  # an empty clipping path leaves nothing to see
                    state.clip = _intersect(
                        state.clip, _box_of(points) if points else (0.0, 0.0, -1.0, -1.0)
                    )
                path, points, pending_clip, moved = [], [], False, None
            elif op == "BT":
                text_matrix = line_matrix = IDENTITY
            elif op == "ET":
                pass
            elif op == "Tf":
                state.font = self._font(resources, n[0])
                state.font_size = _number(n[1])
            elif op == "Tc":
                state.char_spacing = _number(n[0])
            elif op == "Tw":
                state.word_spacing = _number(n[0])
            elif op == "Tz":
                state.horizontal = _number(n[0]) / 100
            elif op == "TL":
                state.leading = _number(n[0])
            elif op == "Ts":
                state.rise = _number(n[0])
            elif op == "Tr":
                state.mode = int(_number(n[0]))
            elif op in ("Td", "TD"):
                tx, ty = _number(n[0]), _number(n[1])
                if op == "TD":
                    state.leading = -ty
                line_matrix = text_matrix = _mul((1.0, 0.0, 0.0, 1.0, tx, ty), line_matrix)
            elif op == "Tm":
                line_matrix = text_matrix = tuple(_number(v) for v in n[:6])  # type: ignore[assignment]
            elif op == "T*":
                line_matrix = text_matrix = _mul(
                    (1.0, 0.0, 0.0, 1.0, 0.0, -state.leading), line_matrix
                )
            elif op in ("Tj", "'", '"', "TJ"):
                if op in ("'", '"'):
                    if op == '"':
                        state.word_spacing, state.char_spacing = _number(n[0]), _number(n[1])
                    line_matrix = text_matrix = _mul(
                        (1.0, 0.0, 0.0, 1.0, 0.0, -state.leading), line_matrix
                    )
                items = n[0] if op == "TJ" else [n[-1]]
                for item in items:
                    if isinstance(item, int | float):
                        shift = -_number(item) / 1000 * state.font_size * state.horizontal
                        text_matrix = _mul((1.0, 0.0, 0.0, 1.0, shift, 0.0), text_matrix)
                    else:
                        text_matrix = self._show(
                            _string(item), text_matrix, state, page, bool(marked and any(marked))
                        )
            elif op == "Do":
                self._xobject(
                    resources,
                    n[0],
                    state,
                    page,
                    depth=depth,
                    forms=forms,
                    optional=bool(marked and any(marked)),
                )
            elif op == "INLINE IMAGE":
                data = n.get("data", b"") if isinstance(n, dict) else b""
                self._picture(
                    ("inline", hashlib.sha256(bytes(data)).hexdigest()[:24]), True, state, page
                )
            elif op == "sh":
                box = state.clip if all(map(math.isfinite, state.clip)) else page.box
                self._add_paint(page, "shading", box, ("sh", str(n[0])), False)
            elif op in ("BMC", "BDC"):
                marked.append(op == "BDC" and bool(n) and n[0] == "/OC")
            elif op == "EMC" and marked:
                marked.pop()
            # anything else (BX/EX, MP/DP, ri, i, d0/d1) draws nothing itself

    def _ext_gstate(self, resources: Any, name: Any, state: _State) -> None:
        states = _get(resources, "/ExtGState") if resources is not None else None
        if states is None or name not in states:
            raise ContentError(f"the graphics state {name} is not among the page's resources")
        entry = states[name].get_object()
        if "/ca" in entry:
            state.fill_alpha = round(_number(entry["/ca"]), 3)
        if "/CA" in entry:
            state.stroke_alpha = round(_number(entry["/CA"]), 3)
        if "/SMask" in entry:
            state.soft_mask = entry["/SMask"] != "/None"
        if "/BM" in entry:
            blend = entry["/BM"]
            blend = blend[0] if isinstance(blend, list) and blend else blend
            state.blend = (
                "Normal" if str(blend) in ("/Normal", "/Compatible") else str(blend).lstrip("/")
            )
        for key in ("/TR", "/TR2"):
            if key in entry:
                state.transfer = str(entry[key]) not in ("/Identity", "/Default")
        if "/LW" in entry:
            state.line_width = _number(entry["/LW"])
        if "/Font" in entry:
            raise ContentError(
                "a graphics state sets a font, which the report's renderer never does"
            )

    def _colour_space(self, resources: Any, name: Any) -> str:
        if str(name) in ("/DeviceRGB", "/DeviceGray", "/DeviceCMYK", "/Pattern"):
            return _space_kind(str(name))
        spaces = _get(resources, "/ColorSpace") if resources is not None else None
        if spaces is None or name not in spaces:
            raise ContentError(f"the colour space {name} is not among the page's resources")
        return _space_kind(spaces[name])

    def _show(self, data: bytes, tm: Matrix, state: _State, page: Page, optional: bool) -> Matrix:
        font = state.font
        if font is None:
            raise ContentError("text is shown before a font is set")
        if len(data) % 2:
            raise ContentError(f"a string shown in {font.name} has an odd number of bytes")
        look = Look(
            state.mode,
            state.fill,
            state.stroke,
            state.fill_alpha,
            state.stroke_alpha,
            state.soft_mask,
            state.blend,
            state.transfer,
            optional,
        )
        size, scale = state.font_size, state.horizontal
        for i in range(0, len(data), 2):
            code = int.from_bytes(data[i : i + 2], "big")
            width = font.width(code)
            rendering = _mul((size * scale, 0.0, 0.0, size, 0.0, state.rise), _mul(tm, state.ctm))
            x, y = _apply(rendering, 0.0, 0.0)
            cx, cy = _apply(rendering, width / 2000, 0.35)
            em = math.hypot(rendering[2], rendering[3])
            across = math.hypot(rendering[0], rendering[1])
            self._seq += 1
            page.glyphs.append(
                Glyph(
                    text=font.unicode.get(code, "\ufffd"),
                    x=x,
                    y=y,
                    cx=cx,
                    cy=cy,
                    size=em,
                    scale=across / em if em else 0.0,
                    advance=width / 1000 * across,
                    font=font.name,
                    shape=font.shape(code),
                    look=look,
                    clip=state.clip,
                    seq=self._seq,
                )
            )
            advance = (width / 1000 * size + state.char_spacing) * scale
            tm = _mul((1.0, 0.0, 0.0, 1.0, advance, 0.0), tm)
        return tm

    def _paint_path(
        self,
        op: str,
        path: list[tuple[str, tuple[float, ...]]],
        points: list[tuple[float, float]],
        state: _State,
        page: Page,
        optional: bool,
    ) -> None:
        fills = op in ("f", "F", "f*", "B", "B*", "b", "b*")
        strokes = op in ("S", "s", "B", "B*", "b", "b*")
        box = _intersect(_box_of(points), state.clip)
        scale = math.sqrt(abs(state.ctm[0] * state.ctm[3] - state.ctm[1] * state.ctm[2]))
        detail = (
            op,
            tuple(path),
            state.fill if fills else None,
            state.stroke if strokes else None,
            (round(state.line_width * scale, 3), state.dash, state.cap_join) if strokes else None,
            state.fill_alpha,
            state.stroke_alpha,
            state.soft_mask,
            state.blend,
            state.transfer,
            optional,
            tuple(_r(c) if math.isfinite(c) else c for c in state.clip),
        )
        opaque = (
            fills
            and state.fill_alpha >= 0.999
            and not state.soft_mask
            and state.blend == "Normal"
            and not optional
        )
        self._add_paint(page, "fill" if fills else "stroke", box, detail, opaque)

    def _add_paint(
        self, page: Page, kind: str, box: Box, detail: tuple[Any, ...], opaque: bool
    ) -> None:
        self._seq += 1
        page.paints.append(Paint(kind, box, detail, opaque, self._seq))

    def _picture(self, identity: tuple[Any, ...], opaque: bool, state: _State, page: Page) -> None:
        corners = [_apply(state.ctm, x, y) for x, y in ((0, 0), (1, 0), (1, 1), (0, 1))]
        box = _box_of(corners)
        detail = (
            "image",
            identity,
            tuple(_r(c) for c in box),
            state.fill_alpha,
            state.soft_mask,
            state.blend,
            tuple(_r(c) if math.isfinite(c) else c for c in state.clip),
        )
        opaque = opaque and state.fill_alpha >= 0.999 and not state.soft_mask
        self._add_paint(page, "picture", _intersect(box, state.clip), detail, opaque)

    def _xobject(
        self,
        resources: Any,
        name: Any,
        state: _State,
        page: Page,
        *,
        depth: int,
        forms: tuple[int, ...],
        optional: bool,
    ) -> None:
        objects = _get(resources, "/XObject") if resources is not None else None
        if objects is None or name not in objects:
            raise ContentError(f"the object {name} is not among the page's resources")
        reference = objects.raw_get(name)
        xobject = objects[name].get_object()
        subtype = _get(xobject, "/Subtype")
        if subtype == "/Image":
            data = bytes(xobject.get_data())
            mask = _get(xobject, "/SMask")
            stencil = bool(_get(xobject, "/ImageMask", False))
            identity = (
                hashlib.sha256(data).hexdigest()[:24],
                int(_get(xobject, "/Width", 0)),
                int(_get(xobject, "/Height", 0)),
                hashlib.sha256(bytes(mask.get_object().get_data())).hexdigest()[:24]
                if mask is not None
                else "",
                state.fill if stencil else None,  # a stencil is painted in the fill colour
            )
            opaque = mask is None and "/Mask" not in xobject and not stencil
            self._picture(identity, opaque, state, page)
            return
        if subtype != "/Form":
            raise ContentError(f"the object {name} is a {subtype} object, which is not drawn here")
        key = getattr(reference, "idnum", None) or id(xobject)
        if depth >= MAX_FORM_DEPTH or key in forms:
            raise ContentError("forms are nested too deeply, or draw themselves")
        inner = state.copy()
        matrix = _get(xobject, "/Matrix")
        if matrix is not None:
            inner.ctm = _mul(tuple(_number(v) for v in matrix), inner.ctm)  # type: ignore[arg-type]
        bbox = _get(xobject, "/BBox")
        if bbox is not None:
            x0, y0, x1, y1 = (_number(v) for v in bbox)
            corners = [_apply(inner.ctm, x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
            inner.clip = _intersect(inner.clip, _box_of(corners))
        inner_resources = _get(xobject, "/Resources", resources)
        if optional or "/OC" in xobject:
            # content a viewer may hide: every glyph and drawing in it says so
            self._run_optional(xobject, inner_resources, inner, page, depth, (*forms, key))
            return
        self._run(xobject, inner_resources, inner, page, depth=depth + 1, forms=(*forms, key))

    def _run_optional(
        self,
        xobject: Any,
        resources: Any,
        state: _State,
        page: Page,
        depth: int,
        forms: tuple[int, ...],
    ) -> None:
        before_glyphs, before_paints = len(page.glyphs), len(page.paints)
        self._run(xobject, resources, state, page, depth=depth + 1, forms=forms)
        for glyph in page.glyphs[before_glyphs:]:
            glyph.look = Look(**{**glyph.look.__dict__, "optional": True})
        page.paints[before_paints:] = [
            Paint(p.kind, p.box, (*p.detail, "optional"), False, p.seq)
            for p in page.paints[before_paints:]
        ]


def _mark_hidden(page: Page) -> None:
    """Why each inked glyph cannot be seen: its centre outside the page, outside its clipping
    area, or under an opaque drawing made after it."""
    import numpy as np

    inked = [g for g in page.glyphs if g.inked]
    for glyph in inked:
        if not _inside(page.box, glyph.cx, glyph.cy, slack=0.5):
            glyph.hidden = "outside the page"
        elif not _inside(glyph.clip, glyph.cx, glyph.cy, slack=0.5):
            glyph.hidden = "clipped away"
    covers = [p for p in page.paints if p.opaque]
    if not inked or not covers:
        return
    gx = np.array([g.cx for g in inked])
    gy = np.array([g.cy for g in inked])
    gs = np.array([g.seq for g in inked])
    boxes = np.array([p.box for p in covers])
    ps = np.array([p.seq for p in covers])
    covered = (
        (ps[None, :] > gs[:, None])
        & (boxes[None, :, 0] <= gx[:, None])
        & (gx[:, None] <= boxes[None, :, 2])
        & (boxes[None, :, 1] <= gy[:, None])
        & (gy[:, None] <= boxes[None, :, 3])
    ).any(axis=1)
    for glyph, hidden in zip(inked, np.atleast_1d(covered).tolist(), strict=True):
        if hidden and not glyph.hidden:
            glyph.hidden = "under an opaque drawing made after it"


def read_pages(reader: Any) -> list[Page]:
    """Every page of a PDF (a pypdf reader) as drawn."""
    interpreter = _Interpreter(reader)
    pages = []
    for number, page in enumerate(reader.pages, start=1):
        try:
            pages.append(interpreter.page(page))
        except ContentError as exc:
            raise ContentError(f"page {number}: {exc}") from None
        except Exception as exc:  # a malformed page: a failed check, never a crash
            reason = " ".join(str(exc).split())[:120]
            raise ContentError(
                f"page {number} cannot be read ({type(exc).__name__}: {reason})"
            ) from None
    return pages


# --- comparing pages ---------------------------------------------------------------------------


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


# --- comparing what a viewer shows besides the pages ------------------------------------------


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
