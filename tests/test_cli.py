"""``agegap predict`` and ``agegap score`` on synthetic photos, with a tiny trained model.

Faces are drawn (an oval head with hair, brows, eyes, nose and mouth) so that
OpenCV's Haar cascade finds them; noise stands in for a photo without a face. The
commands run in-process through :func:`agegap.cli.main`, so TensorFlow starts once
for the whole module; ``test_console_script_*`` run the installed script itself.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from agegap.cli import build_parser, main
from agegap.faces import Box, detect_faces, head_box
from agegap.images import UndecodableImageError, decode_rgb
from agegap.predict import FACE_DETECTED, FACE_NONE, FACE_NOT_SEARCHED

MODEL_SIZE = 32


# --- synthetic pictures ---------------------------------------------------------------


def draw_face(size: int = 200, background: tuple[int, int, int] = (90, 120, 160)) -> Image.Image:
    """A cartoon frontal face the Haar cascade finds (checked at 100 to 400 px)."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    s = size / 200

    def oval(box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
        draw.ellipse([v * s for v in box], fill=fill)

    oval((45, 25, 155, 130), (50, 35, 25))  # hair
    oval((55, 45, 145, 170), (225, 185, 155))  # face
    draw.rectangle([68 * s, 82 * s, 92 * s, 87 * s], fill=(60, 40, 30))  # brows
    draw.rectangle([108 * s, 82 * s, 132 * s, 87 * s], fill=(60, 40, 30))
    oval((70, 92, 90, 104), (40, 30, 30))  # eyes
    oval((110, 92, 130, 104), (40, 30, 30))
    draw.polygon([(100 * s, 100 * s), (93 * s, 128 * s), (107 * s, 128 * s)], fill=(205, 160, 130))
    oval((85, 140, 115, 150), (120, 40, 40))  # mouth
    return image.filter(ImageFilter.GaussianBlur(1.5 * s))


def noise(width: int = 120, height: int = 90, seed: int = 0) -> Image.Image:
    """A picture without a face."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def two_faces() -> Image.Image:
    """A wide picture with a large face on the left and a smaller one on the right."""
    canvas = Image.new("RGB", (420, 240), (90, 120, 160))
    canvas.paste(draw_face(220), (0, 10))
    canvas.paste(draw_face(160), (250, 40))
    return canvas


def header_only_png(width: int, height: int) -> bytes:
    """A few hundred bytes that claim a ``width`` x ``height`` canvas: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def save_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# --- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-block network for 32-pixel inputs, fitted for a step and saved as .keras."""
    from agegap.model import build_model
    from agegap.params import Params

    model = build_model(
        Params(image_size=MODEL_SIZE, conv_filters=(8,), kernel_size=3, dense_units=8, epochs=1)
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, MODEL_SIZE, MODEL_SIZE, 3), dtype=np.uint8)
    labels = (np.arange(16) % 2).astype(np.float32)
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``agegap ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def predict_json(
    capsys: pytest.CaptureFixture[str], model: Path, *args: str | Path
) -> tuple[int, list[dict], str]:
    status, out, err = run_cli(capsys, "predict", *args, "--model", model, "--format", "json")
    return status, json.loads(out), err


def labelled_folder(root: Path, per_class: int = 6) -> Path:
    """``root/old`` and ``root/young`` of faces, darker for old, on varied backgrounds."""
    rng = np.random.default_rng(1)
    for label in ("old", "young"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            background = tuple(int(v) for v in rng.integers(40, 220, 3))
            face = draw_face(int(rng.integers(80, 140)), background)
            if label == "old":
                face = face.point(lambda v: int(v * 0.6))
            face.save(root / label / f"{label}_{index}.png")
    return root


# --- help -----------------------------------------------------------------------------


def test_help_explains_every_option() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == {"predict", "score", "serve", "prime-download"}
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"agegap {name}: {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        assert "example:" in text or "examples:" in text
    predict_help = subparsers["predict"].format_help()
    for option in ("--model", "--format", "--no-detect-faces", "--annotate", "EXIF"):
        assert option in predict_help
    score_help = subparsers["score"].format_help()
    for option in ("--model", "--json", "--detect-faces", "--probes", "evaluate"):
        assert option in score_help


def test_console_script_help_does_not_start_tensorflow() -> None:
    script = Path(sys.executable).parent / "agegap"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout and "score" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\nfrom agegap.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr


def test_wrong_command_line_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "predict")
    assert status == 2 and "PATH" in err
    status, _, err = run_cli(capsys, "predict", "x.png", "--format", "xml")
    assert status == 2 and "invalid choice" in err


# --- face detection and cropping ------------------------------------------------------


@pytest.mark.parametrize("size", [100, 200, 400])
def test_drawn_face_is_found(size: int) -> None:
    faces = detect_faces(draw_face(size))
    assert len(faces) == 1
    face = faces[0]
    # the detector's box covers the drawn head's centre
    assert face.x < size / 2 < face.x + face.width and face.y < size / 2 < face.y + face.height


def test_noise_and_flat_pictures_have_no_face() -> None:
    assert detect_faces(noise()) == []
    assert detect_faces(Image.new("RGB", (64, 64), (128, 128, 128))) == []


def test_two_faces_largest_first() -> None:
    faces = detect_faces(two_faces())
    assert len(faces) == 2
    assert faces[0].area > faces[1].area and faces[0].x < faces[1].x


def test_head_box_is_a_square_with_margin_inside_the_image() -> None:
    face = Box(40, 50, 100, 100)
    head = head_box(face, 400, 300)
    assert head.width == head.height == 135  # 1.35 times the face, as LAG frames heads
    assert head.x <= face.x and head.y <= face.y
    assert head.x + head.width >= face.x + face.width
    assert head.y + head.height >= face.y + face.height
    # more room below the face than above, as in LAG
    assert (head.y + head.height) - (face.y + face.height) > face.y - head.y
    # at an edge the square slides inward instead of leaving the image
    corner = head_box(Box(0, 0, 60, 60), 400, 300)
    assert (corner.x, corner.y, corner.width) == (0, 0, 81)
    # a face filling a small image: the crop is the largest square that fits
    small = head_box(Box(5, 0, 90, 80), 100, 80)
    assert (small.width, small.height) == (80, 80)
    assert 0 <= small.x <= 20 and small.y == 0


def test_head_crop_of_a_lag_like_image_is_the_whole_image() -> None:
    """A LAG-framed face (image side 1.35 times the box) crops back to the whole image."""
    face = Box(13, 6, 74, 74)  # the detector's box on a typical 100x100 LAG image
    assert head_box(face, 100, 100) == Box(0, 0, 100, 100)


# --- predict: formats, modes, orientation ---------------------------------------------


FORMATS = {
    "face.jpg": lambda: save_bytes(draw_face(), "JPEG", quality=95),
    "face.png": lambda: save_bytes(draw_face(), "PNG"),
    "face.webp": lambda: save_bytes(draw_face(), "WEBP", quality=95),
    "face.bmp": lambda: save_bytes(draw_face(), "BMP"),
    "face.gif": lambda: save_bytes(draw_face().quantize(256), "GIF"),
    "face.tif": lambda: save_bytes(draw_face(), "TIFF"),
    "rgba.png": lambda: save_bytes(draw_face().convert("RGBA"), "PNG"),
    "transparent.png": lambda: save_bytes(_with_transparent_corner(draw_face()), "PNG"),
    "gray.png": lambda: save_bytes(draw_face().convert("L"), "PNG"),
    "gray_alpha.png": lambda: save_bytes(draw_face().convert("LA"), "PNG"),
    "palette.png": lambda: save_bytes(draw_face().convert("P"), "PNG"),
    "cmyk.jpg": lambda: save_bytes(draw_face().convert("CMYK"), "JPEG", quality=95),
    "cmyk.tif": lambda: save_bytes(draw_face().convert("CMYK"), "TIFF"),
    "gray16.png": lambda: save_bytes(_sixteen_bit(draw_face()), "PNG"),
    "gray16.tif": lambda: save_bytes(_sixteen_bit(draw_face()), "TIFF"),
}


def _with_transparent_corner(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, 30, 30))
    return rgba


def _sixteen_bit(image: Image.Image) -> Image.Image:
    """The face as a 16-bit grayscale image using the whole 0..65535 range."""
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(gray.astype(np.uint16))  # mode I;16


@pytest.mark.slow
def test_every_format_and_mode_is_read_and_its_face_found(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, make in FORMATS.items():
        (folder / name).write_bytes(make())
    # the mode really is what the name says (Pillow could silently write RGB)
    modes = {name: Image.open(folder / name).mode for name in FORMATS}
    assert modes["cmyk.jpg"] == "CMYK" and modes["palette.png"] == "P"
    assert modes["gray16.png"].startswith("I") and modes["gray_alpha.png"] == "LA"
    status, rows, err = predict_json(capsys, tiny_model, folder)
    assert status == 0, err
    by_name = {Path(row["file"]).name: row for row in rows}
    assert set(by_name) == set(FORMATS)
    for name, row in by_name.items():
        assert row["error"] is None, (name, row)
        assert row["face"] == FACE_DETECTED, (name, row)
        assert row["label"] in ("old", "young")
        assert 0.5 <= row["probability"] <= 1.0
        assert row["probability"] == pytest.approx(
            row["p_young"] if row["label"] == "young" else 1 - row["p_young"]
        )


@pytest.mark.slow
def test_gif_uses_its_first_frame(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    face, other = draw_face().quantize(256), noise(200, 200).quantize(256)
    face.save(tmp_path / "face_first.gif", save_all=True, append_images=[other], duration=100)
    other.save(tmp_path / "noise_first.gif", save_all=True, append_images=[face], duration=100)
    assert Image.open(tmp_path / "face_first.gif").n_frames == 2
    status, rows, _ = predict_json(capsys, tiny_model, tmp_path)
    faces = {Path(row["file"]).name: row["face"] for row in rows}
    assert status == 0
    assert faces == {"face_first.gif": FACE_DETECTED, "noise_first.gif": FACE_NONE}


@pytest.mark.slow
def test_exif_orientation_is_honoured(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A camera held sideways: pixels stored rotated, EXIF says "rotate 90 degrees to view".
    upright = draw_face(200).resize((200, 160))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 160 wide, 200 high, face on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates 90 degrees clockwise
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    assert detect_faces(decode_rgb(path, exif_transpose=False)) == []  # sideways: no face
    assert decode_rgb(path).size == (200, 160)
    status, rows, _ = predict_json(capsys, tiny_model, path)
    assert status == 0
    [row] = rows
    assert row["face"] == FACE_DETECTED
    x, y, width, height = row["box"]
    assert x + width <= 200 and y + height <= 160  # in the upright picture's pixels


@pytest.mark.slow
def test_one_row_per_face_and_whole_image_when_none(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two_faces().save(tmp_path / "group.png")
    noise(150, 100).save(tmp_path / "landscape.png")
    status, rows, _ = predict_json(capsys, tiny_model, tmp_path)
    assert status == 0
    group = [row for row in rows if row["file"].endswith("group.png")]
    assert [row["face"] for row in group] == [FACE_DETECTED, FACE_DETECTED]
    assert group[0]["box"][2] > group[1]["box"][2]
    [landscape] = [row for row in rows if row["file"].endswith("landscape.png")]
    assert landscape["face"] == FACE_NONE and landscape["box"] == [0, 0, 150, 100]
    status, rows, _ = predict_json(capsys, tiny_model, tmp_path, "--no-detect-faces")
    assert [row["face"] for row in rows] == [FACE_NOT_SEARCHED] * 2
    assert {tuple(row["box"]) for row in rows} == {(0, 0, 420, 240), (0, 0, 150, 100)}


@pytest.mark.slow
def test_table_says_when_no_face_was_found(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draw_face().save(tmp_path / "face.png")
    noise().save(tmp_path / "noise.png")
    status, out, _ = run_cli(capsys, "predict", tmp_path, "--model", tiny_model)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["FILE", "FACE"]
    [face_line] = [line for line in lines if "face.png" in line]
    [noise_line] = [line for line in lines if "noise.png" in line]
    assert " face " in face_line and "no face: whole image" in noise_line
    assert face_line.split()[-2] in ("old", "young")


# --- JSON and CSV parse back ----------------------------------------------------------


@pytest.mark.slow
def test_json_and_csv_parse_back_to_the_same_rows(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draw_face().save(tmp_path / "face, with comma.png")
    two_faces().save(tmp_path / "group.jpg")
    noise().save(tmp_path / "noise.webp")
    (tmp_path / "broken.png").write_bytes(b"")
    status_json, rows, _ = predict_json(capsys, tiny_model, tmp_path)
    status_csv, out, _ = run_cli(
        capsys, "predict", tmp_path, "--model", tiny_model, "--format", "csv"
    )
    assert status_json == status_csv == 1  # the empty file
    records = list(csv.DictReader(io.StringIO(out)))
    assert len(records) == len(rows) == 5
    for row, record in zip(rows, records, strict=True):
        assert record["file"] == row["file"]
        if row["error"]:
            assert record["error"] == row["error"] and record["label"] == ""
            assert row["box"] is None and row["probability"] is None
            continue
        assert record["face"] == row["face"] and record["label"] == row["label"]
        box = [int(record[key]) for key in ("x", "y", "width", "height")]
        assert box == row["box"]
        assert float(record["probability"]) == row["probability"]  # full precision
        assert float(record["p_young"]) == row["p_young"]
        assert record["error"] == ""


# --- annotate -------------------------------------------------------------------------


@pytest.mark.slow
def test_annotate_draws_boxes_and_labels(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegap.annotate import COLOURS

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    two_faces().save(photos / "sub" / "group.png")
    noise().save(photos / "noise.jpg", quality=95)
    out_dir = tmp_path / "annotated"
    status, rows, _ = predict_json(capsys, tiny_model, photos, "--annotate", out_dir)
    assert status == 0
    group = out_dir / "photos" / "sub" / "group.png"
    assert group.is_file() and (out_dir / "photos" / "noise.jpg").is_file()
    drawn = np.asarray(Image.open(group).convert("RGB"), dtype=int)
    for row in (r for r in rows if r["file"].endswith("group.png")):
        x, y, _, height = row["box"]
        edge = drawn[y + height // 2, x]  # the middle of the box's left side
        assert np.abs(edge - COLOURS[row["label"]]).max() < 10
    noisy = Image.open(out_dir / "photos" / "noise.jpg")
    assert noisy.format == "JPEG" and noisy.size == (120, 90)
    corner = np.asarray(noisy.convert("RGB"), dtype=int)[2:8, 2:8]  # under the label
    label = next(r["label"] for r in rows if r["file"].endswith("noise.jpg"))
    assert np.abs(corner.mean(axis=(0, 1)) - COLOURS[label]).max() < 40


# --- bad input ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_bomb_pillow_only_warns_about_is_refused_whatever_other_threads_do(
    tmp_path: Path,
) -> None:
    """Between the pixel limit and twice it Pillow only warns, and warnings filters are
    process-wide: other code (Keras predicting beside the decoding threads, for one) that
    leaves its own ``warnings.catch_warnings`` scope puts back the filters it found, and
    the refusal must not hang on them."""
    bomb = tmp_path / "bomb_warning_size.png"
    bomb.write_bytes(header_only_png(8_000, 8_000))
    done = threading.Event()

    def other_code_with_its_own_warnings_scope() -> None:
        while not done.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("default")

    def refusal() -> str:
        try:
            decode_rgb(bomb)
        except UndecodableImageError as error:
            return str(error)
        return "decoded"

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave every few bytecodes, as under load
    neighbour = threading.Thread(target=other_code_with_its_own_warnings_scope)
    neighbour.start()
    try:
        refusals = [refusal() for _ in range(300)]
    finally:
        done.set()
        neighbour.join()
        sys.setswitchinterval(switch_interval)
    assert all("decompression bomb" in text for text in refusals), set(refusals)


@pytest.mark.slow
def test_bad_files_get_a_row_each_and_the_rest_is_predicted(
    tmp_path: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    draw_face().save(folder / "good.png")
    good_png = (folder / "good.png").read_bytes()
    good_jpg = save_bytes(draw_face(), "JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image at all", encoding="utf-8")
    (folder / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (folder / "truncated.jpg").write_bytes(good_jpg[: len(good_jpg) // 2])
    (folder / "bomb.png").write_bytes(header_only_png(20_000, 20_000))
    (folder / "bomb_warning_size.png").write_bytes(header_only_png(8_000, 8_000))
    unreadable = folder / "unreadable.png"
    unreadable.write_bytes(good_png)
    unreadable.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make this one file fail to open as it would
        original_open = Path.open

        def deny(self: Path, *args: Any, **kwargs: Any) -> Any:
            if self.name == "unreadable.png":
                raise PermissionError(13, "Permission denied", str(self))
            return original_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", deny)
    (folder / "notes.txt").write_text("skipped: not an image name", encoding="utf-8")
    (folder / ".hidden.jpg").write_bytes(b"AppleDouble")
    empty_folder = tmp_path / "nothing_here"
    empty_folder.mkdir()
    (empty_folder / "readme.md").write_text("no pictures", encoding="utf-8")

    status, rows, err = predict_json(
        capsys, tiny_model, folder, empty_folder, tmp_path / "missing.jpg", folder / "notes.txt"
    )
    assert status == 1
    assert "could not be predicted" in err and len(err.strip().splitlines()) == 1
    errors = {Path(row["file"]).name: row["error"] for row in rows if row["error"]}
    assert errors == {
        "empty.jpg": "empty file (0 bytes)",
        "text.png": "not an image Pillow recognises",
        "truncated.png": errors["truncated.png"],
        "truncated.jpg": errors["truncated.jpg"],
        "bomb.png": errors["bomb.png"],
        "bomb_warning_size.png": errors["bomb_warning_size.png"],
        "unreadable.png": "cannot read: Permission denied",
        "nothing_here": errors["nothing_here"],
        "missing.jpg": "no such file or folder",
        "notes.txt": "not an image Pillow recognises",
    }
    assert errors["truncated.png"].startswith("cannot decode")
    assert "truncated" in errors["truncated.jpg"]
    assert "decompression bomb" in errors["bomb.png"]
    assert "decompression bomb" in errors["bomb_warning_size.png"]
    assert errors["nothing_here"].startswith("folder has no images")
    for message in errors.values():
        assert "\n" not in message and len(message) < 200
    [good] = [row for row in rows if row["file"].endswith("good.png")]
    assert good["face"] == FACE_DETECTED and good["label"] in ("old", "young")


def test_missing_and_corrupt_model_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draw_face().save(tmp_path / "face.png")
    status, out, err = run_cli(
        capsys, "predict", tmp_path / "face.png", "--model", tmp_path / "none.keras"
    )
    assert status == 1 and out == ""
    assert err.startswith("error: ") and "no such model file" in err
    assert len(err.strip().splitlines()) == 1
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 this is not a keras archive")
    for command in (["predict", tmp_path / "face.png"], ["score", tmp_path]):
        status, out, err = run_cli(capsys, *command, "--model", corrupt)
        assert status == 1 and out == ""
        assert err.startswith("error: ") and "not a loadable Keras model" in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_batches_give_the_same_rows_as_one_batch(tmp_path: Path, tiny_model: Path) -> None:
    from agegap.model import load_trained_model
    from agegap.predict import Source, collect, predict

    for index in range(23):
        (draw_face(100 + 4 * index) if index % 3 else noise(seed=index)).save(
            tmp_path / f"{index:02d}.png"
        )
    (tmp_path / "07.png").write_bytes(b"")  # a failure in the middle of a batch
    model = load_trained_model(tiny_model)
    sources = [entry for entry in collect([tmp_path]) if isinstance(entry, Source)]
    whole = [row for _, rows in predict(model, sources) for row in rows]
    chunked = [row for _, rows in predict(model, sources, chunk_files=5) for row in rows]
    assert [r.file for r in whole] == [str(tmp_path / f"{i:02d}.png") for i in range(23)]
    assert [(r.file, r.box, r.label, r.error) for r in chunked] == [
        (r.file, r.box, r.label, r.error) for r in whole
    ]
    np.testing.assert_allclose(
        [r.p_young for r in chunked if not r.failed],
        [r.p_young for r in whole if not r.failed],
        rtol=1e-5,
    )


# --- score ----------------------------------------------------------------------------


@pytest.mark.slow
def test_score_agrees_with_predict_and_scoring(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agegap.scoring import score_predictions

    folder = labelled_folder(tmp_path / "labelled")
    status, out, err = run_cli(capsys, "score", folder, "--model", tiny_model, "--json")
    assert status == 0, err
    scores = json.loads(out)
    assert scores["n_images"] == 12 and scores["failed"] == []
    assert sum(map(sum, scores["confusion"])) == 12
    # predict --no-detect-faces decodes each file the same way: same probabilities
    _, rows, _ = predict_json(capsys, tiny_model, folder, "--no-detect-faces")
    labels = [1.0 if "/young/" in row["file"] else 0.0 for row in rows]
    again = score_predictions(np.array(labels), np.array([row["p_young"] for row in rows]))
    assert scores["accuracy"] == again.accuracy
    assert scores["loss"] == pytest.approx(again.loss, rel=1e-6)
    assert scores["confusion"] == again.confusion
    status, out, _ = run_cli(capsys, "score", folder, "--model", tiny_model)
    assert status == 0
    assert "accuracy" in out and "ROC AUC" in out and "true young" in out
    status, out, _ = run_cli(
        capsys, "score", folder, "--model", tiny_model, "--json", "--detect-faces"
    )
    assert status == 0 and json.loads(out)["n_images"] == 12


@pytest.mark.slow
def test_score_follows_the_projects_tta_flip(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a project folder the default is params.yaml's tta_flip, as the evaluate stage."""
    folder = labelled_folder(tmp_path / "labelled")

    def scores(*flags: str) -> dict:
        status, out, err = run_cli(capsys, "score", folder, "--model", tiny_model, "--json",
                                   *flags)
        assert status == 0, err
        return json.loads(out)

    monkeypatch.chdir(tmp_path)  # no params.yaml here: off
    plain = scores("--no-tta-flip")
    flipped = scores("--tta-flip")
    assert flipped["loss"] != plain["loss"]  # so the comparisons below can tell them apart
    assert scores() == plain
    (tmp_path / "params.yaml").write_text("tta_flip: true\n", encoding="utf-8")
    assert scores() == flipped
    assert scores("--no-tta-flip") == plain
    (tmp_path / "params.yaml").write_text("epochs: 3\n", encoding="utf-8")
    assert scores() == plain  # a missing key takes the default (off), as in the stages
    (tmp_path / "params.yaml").write_text("tta_flip: maybe\n", encoding="utf-8")
    status, _, err = run_cli(capsys, "score", folder, "--model", tiny_model)
    assert status == 1
    assert err.strip() == "error: params.yaml: tta_flip='maybe' is invalid: expected true or false"


@pytest.mark.slow
def test_score_reports_bad_files_and_scores_the_rest(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = labelled_folder(tmp_path / "labelled", per_class=3)
    (folder / "old" / "empty.png").write_bytes(b"")
    (folder / "young" / "notes.txt").write_text("hello", encoding="utf-8")
    status, out, err = run_cli(capsys, "score", folder, "--model", tiny_model, "--json")
    assert status == 1
    scores = json.loads(out)
    assert scores["n_images"] == 6
    assert {Path(f["file"]).name for f in scores["failed"]} == {"empty.png", "notes.txt"}
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)


@pytest.mark.slow
def test_score_one_class_folder_has_null_roc_auc(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = labelled_folder(tmp_path / "labelled", per_class=2)
    for path in (folder / "young").iterdir():
        path.unlink()
    status, out, _ = run_cli(capsys, "score", folder, "--model", tiny_model, "--json")
    assert status == 0 and json.loads(out)["roc_auc"] is None
    status, out, _ = run_cli(capsys, "score", folder, "--model", tiny_model)
    assert "undefined" in out


@pytest.mark.slow
def test_score_without_images_is_one_line_error(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty" / "old").mkdir(parents=True)
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        status, out, err = run_cli(capsys, "score", folder, "--model", tiny_model)
        assert status == 1 and out == ""
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_missing_haar_cascade_is_one_line_error(
    tmp_path: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenCV 5 wheels no longer ship the cascade: say so, and how to go on."""
    import threading

    from agegap import faces

    monkeypatch.setattr(faces, "_PER_THREAD", threading.local())
    monkeypatch.setattr(faces, "_cascade_path", lambda: tmp_path / "absent.xml")
    draw_face().save(tmp_path / "face.png")
    status, out, err = run_cli(capsys, "predict", tmp_path / "face.png", "--model", tiny_model)
    assert status == 1 and out == ""
    assert err.startswith("error: face detection needs OpenCV's Haar cascade")
    assert "--no-detect-faces" in err and len(err.strip().splitlines()) == 1
    status, rows, _ = predict_json(capsys, tiny_model, tmp_path / "face.png", "--no-detect-faces")
    assert status == 0 and rows[0]["face"] == FACE_NOT_SEARCHED


@pytest.mark.slow
def test_console_script_stderr_has_only_our_lines(tmp_path: Path, tiny_model: Path) -> None:
    """TensorFlow's start-up logging must not bury the one error line."""
    draw_face().save(tmp_path / "face.png")
    script = Path(sys.executable).parent / "agegap"
    env = {k: v for k, v in os.environ.items() if k != "AGEGAP_DEBUG"}
    result = subprocess.run(
        [script, "predict", tmp_path / "face.png", tmp_path / "gone.png", "--model", tiny_model],
        capture_output=True,
        text=True,
        timeout=600,  # a loaded CI machine can take minutes to start TensorFlow
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: 1 path could not be predicted (see their rows)"]
    assert "face.png" in result.stdout and "no such file or folder" in result.stdout
