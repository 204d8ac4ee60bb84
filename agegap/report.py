"""What ``agegap predict`` and ``agegap score`` print: tables for people, JSON and CSV for scripts.

Machine formats keep full float precision (``repr``): scripts get the model's exact numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agegap.predict import FACE_DETECTED, FACE_NONE, FACE_NOT_SEARCHED, Prediction
from agegap.scoring import Scores

if TYPE_CHECKING:
    from agegap.probes import ProbeScore, Robustness

CSV_COLUMNS = (
    "file",
    "face",
    "x",
    "y",
    "width",
    "height",
    "label",
    "probability",
    "p_young",
    "error",
)

_FACE_TEXT = {
    FACE_DETECTED: "face",
    FACE_NONE: "no face: whole image",
    FACE_NOT_SEARCHED: "whole image",
}


def prediction_dict(row: Prediction) -> dict[str, Any]:
    """A row as plain JSON types; ``box`` is ``[x, y, width, height]`` or null."""
    return {
        "file": row.file,
        "face": row.face or None,
        "box": list(row.box.as_tuple()) if row.box else None,
        "label": row.label or None,
        "probability": row.probability,
        "p_young": row.p_young,
        "error": row.error or None,
    }


def predictions_json(rows: Sequence[Prediction]) -> str:
    """A JSON array, one object per row and per line: readable, and any JSON parser takes it."""
    objects = [json.dumps(prediction_dict(row), ensure_ascii=False) for row in rows]
    return "[\n" + ",\n".join(f"  {text}" for text in objects) + ("\n]\n" if objects else "]\n")


def predictions_csv(rows: Sequence[Prediction]) -> str:
    """CSV with a header; empty cells where a failed file has no face, label or probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        box = row.box.as_tuple() if row.box else ("", "", "", "")
        writer.writerow(
            [
                row.file,
                row.face,
                *box,
                row.label,
                "" if row.probability is None else repr(row.probability),
                "" if row.p_young is None else repr(row.p_young),
                row.error,
            ]
        )
    return buffer.getvalue()


def predictions_table(rows: Sequence[Prediction]) -> str:
    """Aligned columns; a failed file's row carries its error instead of a label."""
    header = ("FILE", "FACE", "BOX x,y,w,h", "LABEL", "PROBABILITY")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        if row.failed:
            lines.append((row.file, f"error: {row.error}"))
            continue
        box = ",".join(str(v) for v in row.box.as_tuple()) if row.box else ""
        face = _FACE_TEXT.get(row.face, row.face)
        lines.append((row.file, face, box, row.label, f"{row.probability:.3f}"))
    full = [line for line in lines if len(line) == len(header)]
    widths = [max(len(line[0]) for line in lines)]
    widths += [max(len(line[i]) for line in full) for i in range(1, len(header))]
    out = []
    for line in lines:
        if len(line) == 2:  # an error spans the rest of the line
            out.append(f"{line[0]:<{widths[0]}}  {line[1]}")
        else:
            out.append(
                "  ".join(
                    f"{cell:<{width}}" for cell, width in zip(line, widths, strict=True)
                ).rstrip()
            )
    return "\n".join(out) + "\n"


def scores_dict(scores: Scores, **extra: Any) -> dict[str, Any]:
    """The scores as JSON-safe values: a one-class folder's undefined ROC AUC becomes null."""
    data = {
        key: (None if isinstance(value, float) and math.isnan(value) else value)
        for key, value in scores.as_dict().items()
    }
    return {**data, **extra}


def scores_text(scores: Scores, folder: str, model: str) -> str:
    """The scores as ``agegap score`` prints them for people."""
    (old_old, old_young), (young_old, young_young) = scores.confusion
    n_old, n_young = old_old + old_young, young_old + young_young
    roc_auc = (
        "undefined (one class only)" if math.isnan(scores.roc_auc) else f"{scores.roc_auc:.4f}"
    )
    return "\n".join(
        [
            f"{scores.n_images} images in {folder} ({n_old} old, {n_young} young); model {model}",
            f"accuracy   {scores.accuracy:.4f}",
            f"loss       {scores.loss:.4f}",
            f"ROC AUC    {roc_auc}",
            f"precision  {scores.precision:.4f}  (positive class: young)",
            f"recall     {scores.recall:.4f}",
            f"F1         {scores.f1:.4f}",
            "",
            "confusion matrix   predicted old  predicted young",
            f"  true old         {old_old:>13}  {old_young:>15}",
            f"  true young       {young_old:>13}  {young_young:>15}",
            "",
        ]
    )


def robustness_text(probed: Robustness) -> str:
    """The probes' table as ``agegap score --probes`` prints it for people."""
    lines = [
        "probe              accuracy  change  old called young  young called old",
        _probe_line("clean", probed.clean, probed.clean.accuracy),
    ]
    lines += [_probe_line(name, score, probed.clean.accuracy)
              for name, score in probed.probes.items()]
    lines.append(
        f"worst probe: {probed.worst_probe}, {100 * probed.gap:.1f} points below clean"
    )
    for film, classes in probed.by_colour.items():
        parts = [
            f"{label} {'-' if group['accuracy'] is None else format(group['accuracy'], '.4f')}"
            f" (n={group['n']})"
            for label, group in classes.items()
        ]
        lines.append(f"{film + ' images:':<17} " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def _probe_line(name: str, score: ProbeScore, clean: float) -> str:
    change = 100 * (score.accuracy - clean)
    return (
        f"{name:<18} {score.accuracy:>8.4f}  {change:>+6.1f}  {score.old_called_young:>16}  "
        f"{score.young_called_old:>16}"
    )
