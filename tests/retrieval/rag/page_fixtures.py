"""PDF files written byte by byte for the page-ingestion tests, and the tiny ColVision models.

:func:`make_pdf` writes a valid PDF 1.4 file: one page per entry of ``pages``, each drawing
its text lines in Helvetica and a few filled rectangles (shapes), with a correct cross-reference
table. With ``user_password`` the file is encrypted with the PDF standard security handler,
revision 2 (40-bit RC4, ISO 32000-1 section 7.6.3, algorithms 2, 3 and 4), so a reader needs the
password to open it. Nothing here depends on a PDF library.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The 32-byte padding string of the standard security handler (ISO 32000-1, 7.6.3.3).
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")
_FILE_ID = hashlib.md5(b"densezip-test-pdf").digest()
_PERMISSIONS = -4  # every permission bit set except the two reserved low bits


def _rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def _padded(password: str) -> bytes:
    return (password.encode("latin-1") + _PAD)[:32]


def _security(user_password: str, owner_password: str) -> tuple[bytes, bytes, bytes]:
    """(file key, /O, /U) for revision 2."""
    owner_key = hashlib.md5(_padded(owner_password)).digest()[:5]
    o_entry = _rc4(owner_key, _padded(user_password))
    key = hashlib.md5(_padded(user_password) + o_entry + _PERMISSIONS.to_bytes(4, "little", signed=True)
                      + _FILE_ID).digest()[:5]
    return key, o_entry, _rc4(key, _PAD)


def _escape(text: str) -> bytes:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


def _content(lines: Sequence[str], page_no: int, width: int, height: int) -> bytes:
    ops = [b"0.2 0.4 0.8 rg", f"40 {height - 120} {width - 80} 60 re f".encode()]
    for k in range(page_no % 4 + 1):  # a different number of shapes per page
        ops += [f"{0.9 - 0.2 * k:.1f} 0.3 0.2 rg".encode(), f"{60 + 90 * k} 80 70 {40 + 30 * k} re f".encode()]
    ops.append(b"0 0 0 rg BT /F1 22 Tf")
    for n, line in enumerate(lines):
        ops.append(f"1 0 0 1 50 {height - 180 - 34 * n} Tm".encode() + b" (" + _escape(line) + b") Tj")
    ops.append(b"ET")
    return b"\n".join(ops)


def make_pdf(path: str | Path, pages: Sequence[Sequence[str]], *, user_password: str | None = None,
             size: tuple[int, int] = (612, 792)) -> Path:
    """Write a PDF with one page per item of ``pages`` (its text lines) and return its path."""
    width, height = size
    n = len(pages)
    # Object numbers: 1 catalog, 2 page tree, 3 font, then page i: 4 + 2i, its content: 5 + 2i.
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + b" ".join(f"{4 + 2 * i} 0 R".encode() for i in range(n))
           + f"] /Count {n} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    key = o_entry = u_entry = None
    if user_password is not None:
        key, o_entry, u_entry = _security(user_password, "owner-" + user_password)
    for i, lines in enumerate(pages):
        stream = _content(lines, i, width, height)
        if key is not None:
            obj_key = hashlib.md5(key + (5 + 2 * i).to_bytes(3, "little") + b"\0\0").digest()[:10]
            stream = _rc4(obj_key, stream)
        objects[4 + 2 * i] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] ".encode()
                              + f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objects[5 + 2 * i] = f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream"
    trailer_extra = b""
    if key is not None:
        assert o_entry is not None and u_entry is not None
        enc = 4 + 2 * n
        objects[enc] = (b"<< /Filter /Standard /V 1 /R 2 /O <" + o_entry.hex().encode() + b"> /U <"
                        + u_entry.hex().encode() + f"> /P {_PERMISSIONS} >>".encode())
        trailer_extra = f" /Encrypt {enc} 0 R".encode()
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode() + objects[num] + b"\nendobj\n"
    xref = len(out)
    count = max(objects) + 1
    out += f"xref\n0 {count}\n0000000000 65535 f \n".encode()
    for num in range(1, count):
        out += f"{offsets[num]:010d} 00000 n \n".encode()
    file_id = _FILE_ID.hex().encode()
    out += (f"trailer\n<< /Size {count} /Root 1 0 R".encode() + trailer_extra + b" /ID [<" + file_id + b"> <"
            + file_id + b">] >>\n" + f"startxref\n{xref}\n%%EOF\n".encode())
    target = Path(path)
    target.write_bytes(bytes(out))
    return target


def make_damaged_pdf(path: str | Path) -> Path:
    """A file named .pdf that no reader can open: a PDF header followed by noise, no objects, no xref."""
    target = Path(path)
    target.write_bytes(b"%PDF-1.4\n" + hashlib.sha256(b"noise").digest() * 8)
    return target


def tiny_colvision(kind: str) -> tuple[Any, Any]:
    """``(model, processor)`` of the tiny random ColPali / ColQwen2 models of the encoder tests."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "encode"))
    try:
        import test_colpali
    finally:
        sys.path.pop(0)
    return test_colpali._tiny_colpali() if kind == "colpali" else test_colpali._tiny_colqwen2()
