"""Documents (PDF, DOCX, ODT, EPUB, HTML, RTF, plain text) indexed as passages that remember
their page or section; scanned PDF pages read with --ocr and reported without; encrypted,
damaged and hostile documents one line each; files of other types counted by extension."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from index.kinds import TEXT
from tests.helpers import write_invoice

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None,
                                     reason="tesseract-ocr is not installed (.ci/run installs it)")
TINY = ("--model", "retriever-tiny", "--pretrained", "none")


def write_pdf(path: Path, pages: list[str | Image.Image]) -> Path:
    """A PDF a page an entry: words as a text layer, or an image alone (a scan)."""
    from fpdf import FPDF

    pdf = FPDF()
    for page in pages:
        pdf.add_page()
        if isinstance(page, str):
            pdf.set_font("helvetica", size=12)
            pdf.multi_cell(0, 8, page)
        else:
            pdf.image(page, x=10, y=10, w=180)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    return path


def invoice_image(tmp: Path) -> Image.Image:
    return Image.open(write_invoice(tmp / "invoice-for-pdf.png")).convert("RGB")


def write_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_paragraph("An opening line before any heading.")
    document.add_heading("Setup", level=1)
    document.add_paragraph("Install the quillfeather package first.")
    document.save(str(path))
    return path


def write_odt(path: Path) -> Path:
    from odf.opendocument import OpenDocumentText
    from odf.text import H, P

    document = OpenDocumentText()
    document.text.addElement(H(outlinelevel=1, text="Garden"))
    document.text.addElement(P(text="Plant the marrowbloom seeds in spring."))
    document.save(str(path))
    return path


def write_epub(path: Path) -> Path:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("book-1")
    book.set_title("A Book")
    book.set_language("en")
    chapter = epub.EpubHtml(title="Chapter Owls", file_name="owls.xhtml", lang="en")
    chapter.content = "<html><body><p>The snowlantern owl hunts at dusk.</p></body></html>"
    book.add_item(chapter)
    book.toc = [chapter]
    book.spine = [chapter]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    epub.write_epub(str(path), book)
    return path


HTML = ("<html><head><title>Guide</title><style>p {color: red}</style>"
        "<script>var hidden = 'scriptonlyword';</script></head><body>"
        "<h2>Install</h2><p>Run the brasswhistle installer.</p></body></html>")
RTF = r"{\rtf1\ansi{\fonttbl\f0 Arial;}\f0 A letter about {\b velvetmoth} tea.\par}"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """One folder of every kind: documents, scans, broken ones and types not indexed."""
    root = tmp_path_factory.mktemp("docs") / "media"
    write_pdf(root / "report.pdf", ["First page.", "Second page.",
                                    "Third page names the zanzibarite mineral."])
    scan = invoice_image(tmp_path_factory.mktemp("scan"))
    write_pdf(root / "mixed.pdf", ["A typed cover page about lichens.", scan])
    write_pdf(root / "scanned.pdf", [scan])
    write_docx(root / "notes.docx")
    write_odt(root / "garden.odt")
    write_epub(root / "book.epub")
    (root / "guide.html").write_text(HTML)
    (root / "letter.rtf").write_text(RTF)
    (root / "readme.rst").write_text("The rst file speaks of tundrafox.\n")
    (root / "table.csv").write_text("name,colour\nplum,violet\n")
    for name in ("a.pages", "b.PAGES", "deck.key", "LICENSE"):
        (root / name).write_bytes(b"not indexed here")
    (root / "damaged.pdf").write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    locked = write_pdf(root / "plain-locked.pdf", ["secret words"])
    _encrypt(locked)
    return root


def _encrypt(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="secret words")
    pdf.set_encryption(owner_password="owner", user_password="user")
    pdf.output(str(path))


def stored_passages(db: Path) -> dict[str, list]:
    """File name -> its text items (ItemView), in position order."""
    from retriever.library.collection import Collection

    collection = Collection.open(db)
    reads = collection.reads
    views = reads.items(reads.item_ids_where(TEXT)).values()
    by_file: dict[str, list] = {}
    for view in sorted(views, key=lambda v: (v.path, v.position)):
        by_file.setdefault(Path(view.path).name, []).append(view)
    return by_file


def top_hit(cli, db: Path, words: str) -> dict:
    found = cli("search", words, "--to", "texts", "--db", db, "--json")
    assert found.exit_code == 0, found.output
    return json.loads(found.stdout.splitlines()[0])


def test_each_document_kind_is_indexed_with_its_page_or_section(docs, cli, tmp_path):
    db = tmp_path / "db"
    run = cli("index", docs, "--db", db, *TINY, "--json")
    assert run.exit_code == 0, run.output
    stored = stored_passages(db)
    where = {name: [(v.page, v.section) for v in views] for name, views in stored.items()}
    assert where["report.pdf"] == [(1, None), (2, None), (3, None)]
    assert [v.page for v in stored["report.pdf"] if "zanzibarite" in v.passage] == [3]
    assert ("quillfeather" in stored["notes.docx"][-1].passage
            and where["notes.docx"] == [(None, None), (None, "Setup")])
    assert where["garden.odt"] == [(None, "Garden")]
    assert "marrowbloom" in stored["garden.odt"][0].passage
    assert where["book.epub"] == [(None, "Chapter Owls")]
    assert where["guide.html"] == [(None, "Install")]
    assert "brasswhistle" in stored["guide.html"][0].passage
    assert not any("scriptonlyword" in v.passage for views in stored.values() for v in views)
    assert "velvetmoth" in stored["letter.rtf"][0].passage and "\\b" not in \
        stored["letter.rtf"][0].passage
    assert "tundrafox" in stored["readme.rst"][0].passage and "violet" in \
        stored["table.csv"][0].passage
    for views in stored.values():  # positions run 0..n-1 in each file
        assert [v.position for v in views] == list(range(len(views)))
    for name in ("report.pdf", "notes.docx", "garden.odt", "book.epub", "guide.html",
                 "letter.rtf"):
        passage = stored[name][-1].passage  # its exact words find it first
        assert Path(top_hit(cli, db, passage)["path"]).name == name


def test_broken_and_scanned_pdfs_are_one_line_each_and_the_run_goes_on(docs, cli, tmp_path):
    run = cli("index", docs, "--db", tmp_path / "db", *TINY, "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    reasons = {Path(f["path"]).name: f["reason"] for f in out["run"]["failures"]}
    assert set(reasons) == {"damaged.pdf", "plain-locked.pdf", "scanned.pdf"}
    assert reasons["plain-locked.pdf"].endswith("plain-locked.pdf: encrypted PDF (needs a "
                                                "password)")
    assert "damaged.pdf: damaged PDF (" in reasons["damaged.pdf"]
    assert reasons["scanned.pdf"].endswith("scanned.pdf: no text layer on pages 1; index "
                                           "with --ocr to read them")
    assert out["run"]["notes"] == [f"{docs / 'mixed.pdf'}: no text layer on pages 2; index "
                                   "with --ocr to read them"]
    for name in ("damaged.pdf", "plain-locked.pdf", "scanned.pdf", "mixed.pdf"):
        assert sum(name in line for line in run.stderr.splitlines()) == 1, run.stderr
    stored = stored_passages(tmp_path / "db")
    assert [v.page for v in stored["mixed.pdf"]] == [1]  # its text page kept
    assert "scanned.pdf" not in stored and out["run"]["texts"] == len(stored)


def test_types_not_indexed_are_counted_in_the_summary_and_info(docs, cli, tmp_path):
    db = tmp_path / "db"
    first = cli("index", docs, "--db", db, *TINY, "--json")
    assert json.loads(first.stdout)["run"]["not_indexed"] == {".pages": 2, ".key": 1,
                                                              "(none)": 1}
    again = cli("index", docs, "--db", db)  # nothing changed; the scan still counts them
    line = "not indexed: 2 .pages, 1 (none), 1 .key"
    assert again.exit_code == 0 and line in again.stdout.splitlines(), again.output
    info = cli("info", "--db", db)
    last_run = next(row for row in info.stdout.splitlines() if row.startswith("last run"))
    assert line in info.stdout.splitlines() and "not_indexed" not in last_run, info.stdout


@needs_tesseract
@pytest.mark.slow
def test_scanned_pages_are_read_with_ocr(docs, cli, tmp_path):
    db = tmp_path / "db"
    run = cli("index", docs, "--db", db, *TINY, "--ocr", "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    assert out["run"]["notes"] == []
    assert {Path(f["path"]).name for f in out["run"]["failures"]} == {"damaged.pdf",
                                                                     "plain-locked.pdf"}
    stored = stored_passages(db)
    scanned = [(v.page, v.passage) for v in stored["scanned.pdf"]]
    assert [page for page, _ in scanned] == [1] and "INVOICE" in scanned[0][1]
    mixed = {v.page: v.passage for v in stored["mixed.pdf"]}
    assert "lichens" in mixed[1] and "TOTAL" in mixed[2]
    hit = top_hit(cli, db, scanned[0][1])  # mixed.pdf's page 2 is the same scan: a tie
    assert hit["passage"] == scanned[0][1] and hit["path"].endswith(".pdf")


def test_a_scanned_pdf_skipped_without_ocr_is_read_by_a_later_ocr_run(tmp_path, cli):
    """Without --ocr it fails as a failure of the moment, not a lasting one: the next run
    reads it again (with --ocr: its words; here, without Tesseract needed: again reported)."""
    root = tmp_path / "media"
    write_pdf(root / "scanned.pdf", [invoice_image(tmp_path)])
    db = tmp_path / "db"
    for _ in range(2):
        out = json.loads(cli("index", root, "--db", db, *TINY, "--json").stdout)
        assert [Path(f["path"]).name for f in out["run"]["failures"]] == ["scanned.pdf"]
        assert out["run"]["known_failures"] == 0


def _million_pages(path: Path) -> Path:
    raw = write_pdf(path, ["The one real page."]).read_bytes()
    assert raw.count(b"/Count 1") == 1
    path.write_bytes(raw.replace(b"/Count 1", b"/Count 1000000"))
    return path


def _zip_bomb_docx(path: Path, source: Path) -> Path:
    """A DOCX whose document.xml unpacks to 100 MB (about 100 kB packed)."""
    with zipfile.ZipFile(source) as good, zipfile.ZipFile(path, "w") as bomb:
        for info in good.infolist():
            data = good.read(info)
            if info.filename == "word/document.xml":
                data = data.replace(b"</w:body>", b" " * (100 * 2**20) + b"</w:body>")
            bomb.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


@pytest.mark.slow
def test_hostile_documents_are_bounded_and_one_line_each(tmp_path, cli):
    root = tmp_path / "media"
    _million_pages(root / "million.pdf")
    _zip_bomb_docx(root / "bomb.docx", write_docx(tmp_path / "good.docx"))
    (root / "deep.html").write_text("<div>" * 100_000 + "deep words" + "</div>" * 100_000)
    (root / "fine.txt").write_text("an ordinary note")
    run = cli("index", root, "--db", tmp_path / "db", *TINY, "--json")
    assert run.exit_code == 0, run.output
    out = json.loads(run.stdout)
    reasons = {Path(f["path"]).name: f["reason"] for f in out["run"]["failures"]}
    assert set(reasons) == {"bomb.docx", "deep.html"}
    assert "DOCX unpacks to 101 MB of text (at most 64 MB" in reasons["bomb.docx"]
    assert "HTML nested 100000 tags deep" in reasons["deep.html"]
    assert out["run"]["notes"] == [f"{root / 'million.pdf'}: damaged PDF (page 2 of 1000000 "
                                   "cannot be read): read pages 1"]
    stored = stored_passages(tmp_path / "db")
    assert [v.page for v in stored["million.pdf"]] == [1] and "fine.txt" in stored
    for name in ("million.pdf", "bomb.docx", "deep.html"):
        assert sum(name in line for line in run.stderr.splitlines()) == 1, run.stderr


def test_extracted_text_stops_at_max_text_bytes(tmp_path):
    from retriever.media.documents import DocumentLimits, read_document

    pdf = write_pdf(tmp_path / "long.pdf", [f"page {n} " + "words " * 100 for n in range(1, 9)])
    whole = read_document(io.BytesIO(pdf.read_bytes()), "long.pdf", DocumentLimits())
    capped = read_document(io.BytesIO(pdf.read_bytes()), "long.pdf",
                           DocumentLimits(max_text_bytes=1500))
    assert [p.page for p in whole.pieces] == list(range(1, 9))
    assert sum(len(p.text.encode()) for p in capped.pieces) <= 1500
    assert [p.page for p in capped.pieces] == [1, 2, 3]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own
def test_ray_reads_documents_as_the_local_engine_does(docs, tmp_path):
    import ray

    from retriever.ingest.ray_engine import start_local
    from tests.helpers import index

    def where(db: Path) -> list[tuple]:
        return [(name, v.position, v.page, v.section, v.passage)
                for name, views in sorted(stored_passages(db).items()) for v in views]

    start_local(2)  # a new one on 127.0.0.1 alone
    try:
        on_ray = index(docs, tmp_path / "ray", "ray")
    finally:
        ray.shutdown()
    local = index(docs, tmp_path / "local", "local")
    assert where(tmp_path / "ray") == where(tmp_path / "local")
    assert [v[2] for v in where(tmp_path / "ray") if v[0] == "report.pdf"] == [1, 2, 3]
    assert on_ray.report.notes == local.report.notes and len(local.report.notes) == 1
    assert on_ray.report.not_indexed == local.report.not_indexed == {
        ".pages": 2, ".key": 1, "(none)": 1}
    assert sorted(f.reason for f in on_ray.report.failures) == sorted(
        f.reason for f in local.report.failures)


@pytest.mark.parametrize("suffix", [".docx", ".odt", ".epub"])
def test_a_damaged_zipped_document_is_one_named_error(tmp_path, suffix):
    from retriever.errors import DocumentError
    from retriever.media.documents import DocumentLimits, read_document

    good = {".docx": write_docx, ".odt": write_odt, ".epub": write_epub}[suffix](
        tmp_path / f"good{suffix}").read_bytes()
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "a zip, but no document in it")
    kind = suffix[1:].upper()
    for broken in (good[: len(good) // 2], other.getvalue(), b"not a zip at all"):
        with pytest.raises(DocumentError, match=f"^x{suffix}: damaged {kind} \\("):
            read_document(io.BytesIO(broken), f"x{suffix}", DocumentLimits())


def test_html_text_that_looks_like_the_heading_markers_stays_text():
    from retriever.media.documents import DocumentLimits, read_document

    html = "<h1>One\x000\x00</h1><p>a\x00 1 \x00b</p><h2>Two</h2><p>c</p>"
    pieces = read_document(io.BytesIO(html.encode()), "x.html", DocumentLimits()).pieces
    assert [(p.section, p.text.split()) for p in pieces] == [("One0", ["a", "1", "b"]),
                                                            ("Two", ["c"])]
