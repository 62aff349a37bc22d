import json
from pathlib import Path

import pytest
from PIL import Image

from retriever.errors import DatasetError
from retriever.training.pairs import Pair, load_pairs, split_pairs
from retriever.training.synthetic import ALL_SCENES, write_captioned_images, write_text_documents


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path)
    return path


def test_folder_reads_sidecar_lines_recursively(tmp_path):
    a = image(tmp_path / "a.jpg")
    a.with_suffix(".txt").write_text("a red square\n\n  the same, reworded  \n")
    b = image(tmp_path / "sub" / "b.png")
    b.with_suffix(".txt").write_text("one caption")
    image(tmp_path / "no_caption.jpg")  # no sidecar: skipped
    hidden = image(tmp_path / ".hidden.jpg")
    hidden.with_suffix(".txt").write_text("hidden")
    in_hidden = image(tmp_path / ".cache" / "c.jpg")
    in_hidden.with_suffix(".txt").write_text("hidden folder")
    (tmp_path / "notes.txt").write_text("a text file with no image")

    pairs = load_pairs(tmp_path)

    assert pairs == [Pair(a, ("a red square", "the same, reworded")),
                     Pair(b, ("one caption",))]
    assert pairs.missing == []
    assert pairs.empty_captions == 0  # a blank line between captions is no caption


def test_csv_resolves_relative_paths_and_merges_rows(tmp_path):
    a, b = image(tmp_path / "imgs" / "a.jpg"), image(tmp_path / "imgs" / "b.jpg")
    table = tmp_path / "data" / "pairs.csv"
    table.parent.mkdir()
    table.write_text('filepath,caption\n../imgs/a.jpg,first\n../imgs/b.jpg,"b, with comma"\n'
                     f"{a},second\n")

    pairs = load_pairs(table)

    assert pairs == [Pair(a.resolve(), ("first", "second")), Pair(b.resolve(), ("b, with comma",))]


def test_tsv_with_renamed_columns(tmp_path):
    a = image(tmp_path / "a.jpg")
    table = tmp_path / "pairs.tsv"
    table.write_text("id\tpath\ttext\n1\ta.jpg\ta red square\n2\ta.jpg\tred, square\n")

    pairs = load_pairs(table, image_col="path", caption_col="text")

    assert pairs == [Pair(a.resolve(), ("a red square", "red, square"))]


def test_jsonl_with_renamed_columns_and_caption_lists(tmp_path):
    a, b = image(tmp_path / "x" / "a.jpg"), image(tmp_path / "x" / "b.jpg")
    rows = [{"img": "x/a.jpg", "txt": "one"}, {"img": "x/b.jpg", "txt": ["two", "three"]},
            {"img": "x/a.jpg", "txt": "four"}]
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")

    pairs = load_pairs(table, image_col="img", caption_col="txt")

    assert pairs == [Pair(a.resolve(), ("one", "four")), Pair(b.resolve(), ("two", "three"))]


@pytest.mark.parametrize(("header", "flag", "column"), [
    ("path,caption", "--image-col", "filepath"),
    ("filepath,text", "--caption-col", "caption"),
])
def test_missing_column_names_the_file_column_and_flag(tmp_path, header, flag, column):
    image(tmp_path / "a.jpg")
    table = tmp_path / "pairs.csv"
    table.write_text(f"{header}\na.jpg,a caption\n")
    with pytest.raises(DatasetError) as err:
        load_pairs(table)
    message = str(err.value)
    assert str(table) in message and repr(column) in message and flag in message
    assert "\n" not in message


def test_missing_jsonl_key_names_the_flag(tmp_path):
    table = tmp_path / "pairs.jsonl"
    table.write_text(json.dumps({"filepath": "a.jpg", "text": "x"}) + "\n")
    with pytest.raises(DatasetError, match="--caption-col"):
        load_pairs(table)


def test_missing_images_are_skipped_and_counted(tmp_path):
    a = image(tmp_path / "a.jpg")
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\na.jpg,here\ngone.jpg,missing\nalso_gone.jpg,missing\n")

    pairs = load_pairs(table)

    assert pairs == [Pair(a.resolve(), ("here",))]
    assert pairs.missing == [(tmp_path / "gone.jpg").resolve(),
                             (tmp_path / "also_gone.jpg").resolve()]


def test_no_existing_image_is_an_error(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\ngone.jpg,missing\n")
    with pytest.raises(DatasetError, match="none of its 1 images exist"):
        load_pairs(table)


@pytest.mark.parametrize(("name", "match"), [
    ("pairs.parquet", "unknown data format '.parquet'"),
    ("absent.csv", "does not exist"),
])
def test_bad_sources_are_dataset_errors(tmp_path, name, match):
    source = tmp_path / name
    if name.endswith(".parquet"):
        source.write_bytes(b"PAR1")
    with pytest.raises(DatasetError, match=match):
        load_pairs(source)


def test_folder_without_captions_is_an_error(tmp_path):
    image(tmp_path / "a.jpg")
    with pytest.raises(DatasetError, match="photo.txt"):
        load_pairs(tmp_path)


def pairs_of(n: int) -> list[Pair]:
    return [Pair(Path(f"{i}.jpg"), (f"caption {i}",)) for i in range(n)]


def test_split_is_by_image_disjoint_and_deterministic():
    pairs = pairs_of(50)
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(pairs)
    assert split_pairs(pairs, 0.2, seed=3) == (train, val)
    assert split_pairs(pairs, 0.2, seed=4)[1] != val
    assert train == [p for p in pairs if p in train]  # input order kept


def test_split_keeps_one_image_on_each_side():
    assert [len(s) for s in split_pairs(pairs_of(3), 0.01, seed=0)] == [2, 1]
    assert [len(s) for s in split_pairs(pairs_of(3), 0.9, seed=0)] == [1, 2]
    assert [len(s) for s in split_pairs(pairs_of(3), 0.0, seed=0)] == [3, 0]


def test_split_rejects_a_fraction_of_one():
    with pytest.raises(DatasetError, match="--val-fraction"):
        split_pairs(pairs_of(3), 1.0, seed=0)


# --- the synthetic data the training tests and `retriever demo` read ---------------------------


def test_synthetic_images_load_as_pairs_with_two_captions(tmp_path):
    paths = write_captioned_images(tmp_path / "a", len(ALL_SCENES) + 3, seed=5)
    pairs = load_pairs(tmp_path / "a")
    assert [p.image for p in pairs] == paths
    assert all(len(p.captions) == 2 for p in pairs)
    first_cycle = {p.captions for p in pairs[:len(ALL_SCENES)]}
    assert len(first_cycle) == len(ALL_SCENES)  # every scene once before any repeats


def test_synthetic_images_are_deterministic_by_seed(tmp_path):
    a = write_captioned_images(tmp_path / "a", 4, seed=1)
    b = write_captioned_images(tmp_path / "b", 4, seed=1)
    c = write_captioned_images(tmp_path / "c", 4, seed=2)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_synthetic_documents_have_one_long_document(tmp_path):
    docs = write_text_documents(tmp_path, seed=0, n=6)
    assert len(docs) == 6 and {d.suffix for d in docs} == {".txt", ".md"}
    words = [len(d.read_text().split()) for d in docs]
    assert max(words) == words[-1] > 4 * 30  # several ~30-token passages
    assert all(w >= 30 for w in words)  # several sentences each
    assert [d.read_text() for d in write_text_documents(tmp_path / "again")] == [
        d.read_text() for d in docs
    ]


def test_a_table_that_is_not_utf8_is_a_dataset_error(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_bytes("filepath,caption\na.jpg,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="UTF-8"):
        load_pairs(table)


# --- COCO captions ----------------------------------------------------------------------------


def coco(path: Path, images: list[dict], annotations: list[dict]) -> Path:
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_coco_json_gathers_each_images_captions_from_the_image_root(tmp_path):
    a, b = image(tmp_path / "train2017" / "a.jpg"), image(tmp_path / "train2017" / "b.jpg")
    (tmp_path / "annotations").mkdir()
    source = coco(tmp_path / "annotations" / "captions.json",
                  [{"id": 7, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"},
                   {"id": 9, "file_name": "gone.jpg"}],
                  [{"image_id": 3, "id": 1, "caption": "b first "},
                   {"image_id": 7, "id": 2, "caption": "a only"},
                   {"image_id": 3, "id": 4, "caption": "b second"},
                   {"image_id": 9, "id": 5, "caption": "missing"}])

    pairs = load_pairs(source, image_root=tmp_path / "train2017")

    assert pairs == [Pair(a.resolve(), ("a only",)), Pair(b.resolve(), ("b first", "b second"))]
    assert pairs.missing == [(tmp_path / "train2017" / "gone.jpg").resolve()]


def test_coco_file_names_default_to_the_json_folder(tmp_path):
    a = image(tmp_path / "a.jpg")
    source = coco(tmp_path / "captions.json", [{"id": 1, "file_name": "a.jpg"}],
                  [{"image_id": 1, "caption": "red"}])
    assert load_pairs(source) == [Pair(a.resolve(), ("red",))]


@pytest.mark.parametrize(("doc", "match"), [
    ({"images": []}, "not COCO captions .*'annotations'"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}],
      "annotations": [{"image_id": 2, "caption": "x"}]}, "image_id 2, which is not in"),
])
def test_malformed_coco_is_a_dataset_error_naming_the_problem(tmp_path, doc, match):
    source = tmp_path / "captions.json"
    source.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=match):
        load_pairs(source)


# --- empty captions: dropped, and counted -----------------------------------------------------


def test_blank_table_captions_are_dropped_and_counted(tmp_path):
    a, b, c = (image(tmp_path / f"{n}.jpg") for n in "abc")
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,caption\na.jpg,red\na.jpg,\nb.jpg,   \nc.jpg,blue\nc.jpg\n")

    pairs = load_pairs(table)

    assert pairs == [Pair(a.resolve(), ("red",)), Pair(c.resolve(), ("blue",))]
    assert pairs.empty_captions == 3  # a's empty cell, b's blank one, c's missing one
    assert pairs.uncaptioned == [b.resolve()]


def test_blank_jsonl_captions_and_list_items_are_counted(tmp_path):
    a, b = image(tmp_path / "a.jpg"), image(tmp_path / "b.jpg")
    table = tmp_path / "pairs.jsonl"
    table.write_text("\n".join(json.dumps(r) for r in [
        {"filepath": "a.jpg", "caption": ["red", " ", None]},
        {"filepath": "b.jpg", "caption": None}]))

    pairs = load_pairs(table)

    assert pairs == [Pair(a.resolve(), ("red",))]
    assert (pairs.empty_captions, pairs.uncaptioned) == (3, [b.resolve()])


def test_a_blank_sidecar_or_coco_caption_is_an_empty_caption(tmp_path):
    a, b = image(tmp_path / "a.jpg"), image(tmp_path / "b.jpg")
    a.with_suffix(".txt").write_text("red\n")
    b.with_suffix(".txt").write_text("\n  \n")
    folder = load_pairs(tmp_path)
    source = coco(tmp_path / "captions.json", [{"id": 1, "file_name": "a.jpg"}],
                  [{"image_id": 1, "caption": "red"}, {"image_id": 1, "caption": " "}])
    table = load_pairs(source)

    assert folder == [Pair(a, ("red",))]
    assert (folder.empty_captions, folder.uncaptioned) == (1, [b])
    assert table == [Pair(a.resolve(), ("red",))]
    assert (table.empty_captions, table.uncaptioned) == (1, [])
