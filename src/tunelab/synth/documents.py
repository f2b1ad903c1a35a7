"""Read in-house documents into normalised text: txt, md, html, docx and pdf.

    docs = [read_document(p) for p in find_documents(["manuals/", "faq.md"])]

- txt/md: UTF-8 (a BOM is fine); files in CP949/EUC-KR, common for Korean documents, are read
  as such when they are not valid UTF-8.
- html: tags, scripts and entities removed (`tunelab.data.normalize.strip_html`).
- docx: read with the standard library (a .docx is a zip of XML): paragraphs in order, table
  cells included, Word heading styles become markdown headings so the chunker sees sections.
- pdf: the text layer through `pypdf` (pure Python, no dependencies; imported only for PDFs).
  A scanned PDF has no text layer: it reads as empty, and the pipeline reports it (no OCR).

All text is NFC-composed (decomposed Hangul from PDFs and macOS files), freed of invisible
characters, and whitespace-collapsed with paragraph breaks kept.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from tunelab.data.normalize import collapse_whitespace, nfc, remove_invisible, strip_html
from tunelab.errors import TunelabError

SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
            ".docx": "docx", ".pdf": "pdf"}  # fmt: skip
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_HEADING_STYLE = re.compile(r"^(?:heading|제목)\s*([1-6])$", re.IGNORECASE)


@dataclass(frozen=True)
class Document:
    source: str  # the path as the user gave it (or as found under a given folder)
    text: str


def find_documents(paths: list[str | Path]) -> list[Path]:
    """Files to read: each given file, and every supported file under each given folder (sorted,
    hidden files skipped). An unsupported or missing path is an error naming it."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))  # fmt: skip
            if not inside:
                raise TunelabError(f"{path}: no documents ({', '.join(sorted(SUFFIXES))}) in this folder")
            found += inside
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise TunelabError(f"{path}: unsupported document type '{path.suffix}'; supported: {', '.join(sorted(SUFFIXES))}")
            found.append(path)
        else:
            raise TunelabError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def clean_text(text: str) -> str:
    """NFC, invisible characters removed, whitespace collapsed with paragraph breaks kept.

    >>> clean_text("\\u1112\\u1161\\u11ab\\u1100\\u1173\\u11af  \\u200b문서\\n\\n\\n\\n둘째")
    '한글 문서\\n\\n둘째'
    """
    return collapse_whitespace(remove_invisible(nfc(text)), keep_newlines=True)


def read_document(path: str | Path) -> Document:
    """The normalised text of one document; an unreadable one is an error naming the file."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TunelabError(f"{path}: unsupported document type '{path.suffix}'")
    try:
        if kind == "pdf":
            text = _read_pdf(path)
        elif kind == "docx":
            text = _read_docx(path)
        else:
            text = _read_text(path)
            if kind == "html":
                text = strip_html(text)
    except OSError as err:
        raise TunelabError(f"{path}: cannot read: {err.strerror or err}") from None
    return Document(str(path), clean_text(text))


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    for encoding in ("utf-8-sig", "cp949"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise TunelabError(f"{path}: neither UTF-8 nor CP949 text; convert it to UTF-8 first")


def _read_docx(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            xml = zf.read("word/document.xml")
    except (zipfile.BadZipFile, KeyError):
        raise TunelabError(f"{path}: not a valid .docx file (no word/document.xml inside)") from None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        raise TunelabError(f"{path}: broken XML in word/document.xml ({err})") from None
    paragraphs = []
    for p in root.iter(f"{_W}p"):  # document order; table cells hold paragraphs too
        parts = []
        for node in p.iter():
            if node.tag == f"{_W}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{_W}tab":
                parts.append("\t")
            elif node.tag in (f"{_W}br", f"{_W}cr"):
                parts.append("\n")
        text = "".join(parts).strip()
        if not text:
            continue
        style = p.find(f"{_W}pPr/{_W}pStyle")
        level = _HEADING_STYLE.match((style.get(f"{_W}val") or "") if style is not None else "")
        paragraphs.append(f"{'#' * int(level.group(1))} {text}" if level else text)
    return "\n\n".join(paragraphs)


def _read_pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise TunelabError(f"{path}: reading PDF needs pypdf: pip install pypdf==7.1.0") from None
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise TunelabError(f"{path}: the PDF is encrypted; save an unprotected copy first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except TunelabError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as err:  # broken files break pypdf in many ways
        raise TunelabError(f"{path}: not a readable PDF ({type(err).__name__}: {err})") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())  # empty for a scan: the pipeline says so
