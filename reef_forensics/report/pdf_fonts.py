"""A page's fonts as a viewer uses them: the character map (/ToUnicode) and each glyph's outline in the embedded font program."""

from __future__ import annotations

import hashlib
import io
import re
from typing import Any

from reef_forensics.report.pdf_content import _SUBSET_TAG, MAX_FONT_ENTRIES, ContentError, _get


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
