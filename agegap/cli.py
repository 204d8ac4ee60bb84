"""The ``agegap`` command line: argument parsing only; the work is in :mod:`agegap.commands`.

Kept free of TensorFlow imports so that ``agegap --help`` answers at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from agegap import __version__
from agegap.errors import exits_cleanly
from agegap.layout import MODEL_PATH
from agegap.params import project_tta_flip

_DESCRIPTION = """\
Tell old from young faces with the model trained by `dvc repro`.

  agegap predict PHOTO_OR_FOLDER...   label each face in photos
  agegap score FOLDER                 accuracy, loss, confusion matrix and ROC AUC
                                      on a labelled folder (FOLDER/old, FOLDER/young);
                                      --probes adds the robustness probes
  agegap serve                        a web page and an HTTP API on the same model
  agegap prime-download ARCHIVE       let `download` use a local copy of the archive

Exit status: 0 when every file was processed, 1 when any file or the model failed
(the other files are still processed), 2 for a wrong command line.
"""

_PREDICT_EPILOG = """\
Formats read: JPEG, PNG, WebP, BMP, GIF (first frame) and TIFF, in any mode (RGBA,
grayscale, palette, CMYK, 16-bit); EXIF orientation is applied first, and face boxes
are in pixels of the upright image. Folders are searched recursively for files with
those extensions. Each face found is cropped with a margin that shows the whole head,
as the LAG training images do, and resized to the model's input size. A file without
a detected face is predicted whole, and its row says so. The probability is that of
the printed label; p_young (JSON, CSV) is the network's output, P(young).

example:
  agegap predict photos/ --format csv > predictions.csv
"""

_SCORE_EPILOG = """\
The numbers come from the same code as the `evaluate` stage (agegap.scoring), so
`agegap score data/split/test` reproduces metrics.json. A file that cannot be decoded
is reported on stderr and left out; the exit status is then 1.

examples:
  agegap score data/split/test --json
  agegap score data/split/test --probes
"""


_SERVE_EPILOG = """\
Open http://127.0.0.1:8000/ for the page. The API: POST /predict (multipart files;
query detect_faces=true|false, tta_flip=true|false) answers one JSON entry per face,
with the numbers `agegap predict` prints; GET /model names the model (dvc.lock's hash,
its params and test metrics); GET /health; the schema is at /openapi.json. Not an
image: 415; too large (bytes or pixels): 413; no file or unreadable: 422.

example:
  agegap serve --port 8000 &
  curl -F image=@photo.jpg http://127.0.0.1:8000/predict
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``agegap`` and its subcommands (also used to check the help texts)."""
    parser = argparse.ArgumentParser(
        prog="agegap",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agegap {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    predict = commands.add_parser(
        "predict",
        help="label the faces in photos as old or young",
        description="Label every face in the given photos (or the whole photo) as old or young.",
        epilog=_PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    predict.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        type=Path,
        help="image files, or folders searched recursively for images",
    )
    _model_option(predict)
    predict.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="output on stdout: an aligned table for reading (default), a JSON array of "
        "objects, or CSV with a header; one row per face, or per failed file",
    )
    predict.add_argument(
        "--no-detect-faces",
        dest="detect_faces",
        action="store_false",
        help="do not look for faces; predict on each whole image, resized (use for "
        "images that are already face crops, like LAG's)",
    )
    predict.add_argument(
        "--annotate",
        metavar="OUT_DIR",
        type=Path,
        help="also write a copy of each image with its face boxes and labels drawn into "
        "OUT_DIR, mirroring the input names (created if missing); files of one name from "
        "different folders keep their parent folders (OUT_DIR/a/x.jpg, OUT_DIR/b/x.jpg)",
    )

    score = commands.add_parser(
        "score",
        help="score the model on a labelled folder (DIR/old, DIR/young)",
        description="Accuracy, loss, precision, recall, F1, confusion matrix and ROC AUC of "
        "the model on a folder laid out like the split: DIR/old/* and DIR/young/*.",
        epilog=_SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument(
        "folder", metavar="DIR", type=Path, help="labelled folder with old/ and young/ inside"
    )
    _model_option(score)
    score.add_argument(
        "--json",
        action="store_true",
        help="print the scores as one JSON object (keys as in metrics.json, plus n_images, "
        "confusion and the failed files) instead of text",
    )
    score.add_argument(
        "--detect-faces",
        action="store_true",
        help="crop each image to its largest detected face (with the head margin) before "
        "scoring, for uncropped photos; by default each whole image is used, as the "
        "evaluate stage does",
    )
    score.add_argument(
        "--probes",
        action="store_true",
        help="also score every image changed in ways that change no one's age (black and "
        "white, sepia, looser and tighter crops, darker, brighter, low contrast, JPEG, blur, "
        "rotation, mirror), and accuracy per class on the colour and grayscale images, as "
        "the evaluate stage does",
    )
    _serve_parser(commands)
    _prime_parser(commands)
    return parser


_PRIME_EPILOG = """\
Copies ARCHIVE to data/downloads/, where the download stage keeps a finished download
of params.yaml's data_url, so `dvc repro` uses it instead of fetching: data_url keeps the
official address and the committed dvc.lock still matches. The copy's SHA-256 is
printed, and checked against --sha256 or params.yaml's data_sha256 when either is set.

example:
  agegap prime-download ../shared/datasets/LAGdataset_100.zip && dvc repro
"""


def _prime_parser(commands: argparse._SubParsersAction) -> None:
    prime = commands.add_parser(
        "prime-download",
        help="let the download stage use a local copy of the archive",
        description="Put a local copy of the LAG archive where `download` looks first.",
        epilog=_PRIME_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prime.add_argument("archive", type=Path, help="the local LAGdataset_100.zip")
    prime.add_argument(
        "--sha256", default="", help="the checksum the copy must have (default: data_sha256)"
    )


def _prime_download(archive: Path, sha256: str) -> int:
    from agegap.fetch import DOWNLOAD_CACHE, prime_download_cache
    from agegap.params import load_params

    params = load_params()
    cached, digest = prime_download_cache(
        archive, params.data_url, sha256 or params.data_sha256, DOWNLOAD_CACHE
    )
    print(f"{archive} -> {cached}\nsha256 {digest}")
    return 0


def _serve_parser(commands: argparse._SubParsersAction) -> None:
    from agegap.serve_settings import (
        DEFAULT_BATCH_WAIT_MS,
        DEFAULT_MAX_FILES,
        DEFAULT_MAX_UPLOAD_MB,
    )

    serve = commands.add_parser(
        "serve",
        help="a web page and an HTTP API to try the model on photos",
        description="Serve the model: a page to drop photos on, and a JSON API for programs.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_option(serve)
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8000,
        help="port to listen on (default: %(default)s; 0 picks a free one)",
    )
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="largest file accepted, in MB; larger ones get 413 (default: %(default)g)",
    )
    serve.add_argument(
        "--max-files",
        type=int,
        default=DEFAULT_MAX_FILES,
        help="most files in one request (default: %(default)s)",
    )
    serve.add_argument(
        "--batch-wait-ms",
        type=float,
        default=DEFAULT_BATCH_WAIT_MS,
        help="how long a model call waits for crops of other requests to join it "
        "(default: %(default)g)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="uvicorn's log level; info logs one line per request (default: %(default)s)",
    )


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=MODEL_PATH,
        help=f"the trained Keras model (default: {MODEL_PATH}, written by `dvc repro`)",
    )
    parser.add_argument(
        "--tta-flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average each face's score with its mirror image's (or not); default: as "
        "params.yaml's tta_flip says when run in the project folder, so the numbers are "
        "the evaluate stage's, and off elsewhere",
    )


@exits_cleanly
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``agegap`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "prime-download":
        return _prime_download(args.archive, args.sha256)
    tta_flip = project_tta_flip() if args.tta_flip is None else args.tta_flip
    from agegap import commands  # imports Keras: only once the command line is valid

    if args.command == "predict":
        return commands.predict_command(
            args.paths,
            model_path=args.model,
            output_format=args.format,
            detect_faces=args.detect_faces,
            annotate_dir=args.annotate,
            tta_flip=tta_flip,
        )
    if args.command == "serve":
        return commands.serve_command(
            model_path=args.model,
            host=args.host,
            port=args.port,
            tta_flip=tta_flip,
            max_upload_mb=args.max_upload_mb,
            max_files=args.max_files,
            batch_wait_ms=args.batch_wait_ms,
            log_level=args.log_level,
        )
    return commands.score_command(
        args.folder,
        model_path=args.model,
        as_json=args.json,
        detect_faces=args.detect_faces,
        tta_flip=tta_flip,
        probes=args.probes,
    )


if __name__ == "__main__":
    raise SystemExit(main())
