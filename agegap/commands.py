"""What ``agegap predict``, ``score`` and ``serve`` do, given parsed arguments.

``score`` runs :mod:`agegap.scoring`, the ``evaluate`` stage's own code, so the two agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from agegap.errors import AgegapError

if TYPE_CHECKING:
    import keras


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what C++ writes to file descriptor 2 to /dev/null for the duration.

    TensorFlow logs half a dozen lines (oneDNN, CUDA drivers, CPU features)
    through absl while it starts, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; they would
    bury the one line a user needs. Set ``AGEGAP_DEBUG=1`` to see them.
    """
    if os.environ.get("AGEGAP_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _load_model(path: Path, *, detect_faces: bool) -> keras.Model:
    """The trained model, with TensorFlow started quietly; one-line errors otherwise.

    Checks the face detector first, so a missing cascade is reported before the
    seconds TensorFlow takes to start.
    """
    from agegap.faces import check_detector

    if detect_faces:
        check_detector()
    with _native_stderr_silenced():
        import keras  # noqa: F401 - TensorFlow starts (and logs) here

        from agegap.model import load_trained_model

        return load_trained_model(path)


def predict_command(
    paths: Sequence[Path],
    *,
    model_path: Path,
    output_format: str = "table",
    detect_faces: bool = True,
    annotate_dir: Path | None = None,
    tta_flip: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print one row per face of every image under ``paths``; 1 if any file failed."""
    model = _load_model(model_path, detect_faces=detect_faces)
    from agegap import report
    from agegap.annotate import target_paths, write_annotated
    from agegap.predict import Prediction, Source, collect, failed_rows, predict

    out = out or sys.stdout
    entries = collect(paths)
    sources = [entry for entry in entries if isinstance(entry, Source)]
    targets = target_paths(annotate_dir, sources) if annotate_dir is not None else {}
    rows_of: dict[Path, list[Prediction]] = {}
    annotate_failures = 0
    for prepared, file_rows in predict(
        model,
        sources,
        detect=detect_faces,
        keep_images=annotate_dir is not None,
        tta_flip=tta_flip,
    ):
        rows_of[prepared.source.path] = file_rows
        if annotate_dir is not None and prepared.image is not None:
            try:
                write_annotated(prepared.image, file_rows, targets[prepared.source.path])
            except (OSError, ValueError) as error:
                annotate_failures += 1
                print(
                    f"error: {prepared.source.path}: cannot write the annotated copy: {error}",
                    file=sys.stderr,
                )
    rows = [
        row
        for entry in entries
        for row in (rows_of[entry.path] if isinstance(entry, Source) else [entry])
    ]
    writers = {
        "table": report.predictions_table,
        "json": report.predictions_json,
        "csv": report.predictions_csv,
    }
    out.write(writers[output_format](rows))
    out.flush()
    failed = failed_rows(rows)
    if failed:
        noun = "path" if failed == 1 else "paths"
        print(f"error: {failed} {noun} could not be predicted (see their rows)", file=sys.stderr)
    return 1 if failed or annotate_failures else 0


def score_command(
    folder: Path,
    *,
    model_path: Path,
    as_json: bool = False,
    detect_faces: bool = False,
    tta_flip: bool = False,
    probes: bool = False,
    out: TextIO | None = None,
) -> int:
    """Print the scores of the model on ``folder/old`` and ``folder/young``, and under the
    robustness probes if asked; 1 if a file failed."""
    if not folder.is_dir():
        raise AgegapError(f"{folder}: no such folder (expected {folder}/old and {folder}/young)")
    model = _load_model(model_path, detect_faces=detect_faces)
    from agegap import report
    from agegap.dataset import load_folder
    from agegap.predict import input_size, model_input
    from agegap.scoring import predict_probabilities, score_predictions

    out = out or sys.stdout
    size = input_size(model)
    failed: list[dict[str, str]] = []

    def report_failure(path: Path, reason: str) -> None:
        failed.append({"file": str(path), "error": reason})
        print(f"error: {path}: {reason}", file=sys.stderr)

    data = load_folder(
        folder,
        size[0],
        loader=lambda path: model_input(path, size, detect=detect_faces),
        on_error=report_failure,
    )
    probabilities = predict_probabilities(model, data.images, tta_flip=tta_flip)
    scores = score_predictions(data.labels, probabilities)
    probed = None
    if probes:
        from agegap.probes import robustness

        probed, _ = robustness(
            model, data.images, data.labels, tta_flip=tta_flip, clean_probabilities=probabilities
        )
    if as_json:
        payload = report.scores_dict(
            scores, folder=str(folder), model=str(model_path), failed=failed,
            **(probed.metrics() if probed else {}),
        )
        out.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(report.scores_text(scores, str(folder), str(model_path)))
        if probed:
            out.write("\n" + report.robustness_text(probed))
    return 1 if failed else 0


def serve_command(
    *,
    model_path: Path,
    host: str,
    port: int,
    tta_flip: bool,
    max_upload_mb: float,
    max_files: int,
    batch_wait_ms: float,
    log_level: str = "info",
) -> int:
    """Serve the page and the API until interrupted; a bad model stops the start in one line."""
    from agegap.serve_settings import MB, ServeSettings

    if max_upload_mb <= 0 or max_files < 1 or batch_wait_ms < 0:
        raise AgegapError(
            "--max-upload-mb must be > 0, --max-files >= 1 and --batch-wait-ms >= 0"
        )
    model = _load_model(model_path, detect_faces=True)
    from agegap.serve import run_server

    settings = ServeSettings(
        max_upload_bytes=int(max_upload_mb * MB),
        max_files=max_files,
        tta_flip=tta_flip,
        batch_wait_s=batch_wait_ms / 1000,
    )
    run_server(model, model_path, host=host, port=port, settings=settings, log_level=log_level)
    return 0
