"""One typed, validated view of ``params.yaml``.

Every stage reads its hyperparameters through :func:`load_params`, so names, types,
allowed values and error messages agree everywhere, and a bad ``dvc exp run -S``
fails before any work starts, with one line naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agegap.errors import AgegapError

PARAMS_FILE = Path("params.yaml")

SPLIT_STRATEGIES = ("identity", "image")
PADDINGS = ("same", "valid")
ACTIVATIONS = ("relu", "prelu", "leaky_relu")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")


@dataclass(frozen=True)
class Params:
    """All hyperparameters, flat like ``params.yaml``; defaults are the `cutout` recipe.

    That is the blog's best network and training (5x5, 32-32-64, dropout 0.1, adam,
    batch 16, its shear/zoom/flip) plus cutout: the one lever that gained on every seed
    of both split strategies under the protocol of ``bench/accuracy.py``, at no cost in
    time (reports/accuracy.md says why it won over batch norm). The other levers stay
    off by default. The blog's recipe alone is the ``dropout-0.1`` row of
    experiments.yaml and the ``blog`` recipe of bench/accuracy_recipes.yaml.
    """

    # data
    data_url: str = (
        "http://www.ivl.disco.unimib.it/wp-content/uploads/2016/09/LAGdataset_100.zip"
    )
    data_sha256: str = ""
    image_size: int = 100
    # split
    split_strategy: str = "identity"
    split_seed: int = 0
    train_per_class: int = 1200
    validation_per_class: int = 600
    test_per_class: int = 110
    cv_folds: int = 0
    cv_fold: int = 0
    # model
    conv_filters: tuple[int, ...] = (32, 32, 64)
    kernel_size: int = 5
    padding: str = "same"
    activation: str = "relu"
    leaky_relu_slope: float = 0.001
    dense_units: int = 64
    dropout: float = 0.1
    batch_norm: bool = False
    # training
    optimizer: str = "adam"
    learning_rate: float = 0.001
    batch_size: int = 16
    epochs: int = 100
    train_images_per_epoch: int = 1200
    seed: int = 0
    augment_shear_degrees: float = 0.2
    augment_zoom: float = 0.2
    augment_flip: bool = True
    augment_rotate_degrees: float = 0.0
    augment_shift: float = 0.0
    augment_cutout: float = 0.4
    augment_scale: float = 0.0
    augment_grayscale: float = 0.0
    augment_brightness: float = 0.0
    augment_contrast: float = 0.0
    augment_saturation: float = 0.0
    augment_blur: float = 0.0
    input_grayscale: bool = False
    mixup_alpha: float = 0.0
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    early_stopping_patience: int = 0
    # evaluation
    tta_flip: bool = False
    precision: str = "auto"
    deterministic: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _fail(key: str, value: object, allowed: str) -> AgegapError:
    return AgegapError(f"params.yaml: {key}={value!r} is invalid: expected {allowed}")


def _as_int(key: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, value, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
    if minimum is not None and value < minimum:
        raise _fail(key, value, f"an integer >= {minimum}")
    return value


def _as_float(key: str, value: object, low: float, high: float, *, high_open: bool) -> float:
    interval = f"a number in [{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _fail(key, value, interval)
    if value < low or value > high or (high_open and value == high):
        raise _fail(key, value, interval)
    return float(value)


def _as_choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(key, value, "one of " + ", ".join(choices))
    return str(value)


def _as_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "true or false")
    return value


def _as_str(key: str, value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(key, value, "a string")
    return value


def _as_filters(key: str, value: object) -> tuple[int, ...]:
    allowed = "a non-empty list of positive integers, e.g. [32, 32, 64]"
    if not isinstance(value, list | tuple) or not value:
        raise _fail(key, value, allowed)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise _fail(key, value, allowed)
    return tuple(value)


def _as_sha256(key: str, value: object) -> str:
    text = _as_str(key, value).strip().lower()
    if text and (len(text) != 64 or any(c not in "0123456789abcdef" for c in text)):
        raise _fail(key, value, "64 hexadecimal digits, or '' to skip the check")
    return text


_VALIDATORS: dict[str, Any] = {
    "data_url": lambda k, v: _as_str(k, v).strip() or _raise(_fail(k, v, "a URL or a path")),
    "data_sha256": _as_sha256,
    "image_size": lambda k, v: _as_int(k, v, 8),
    "split_strategy": lambda k, v: _as_choice(k, v, SPLIT_STRATEGIES),
    "split_seed": lambda k, v: _as_int(k, v, 0),
    "train_per_class": lambda k, v: _as_int(k, v, 1),
    "validation_per_class": lambda k, v: _as_int(k, v, 1),
    "test_per_class": lambda k, v: _as_int(k, v, 1),
    "cv_folds": lambda k, v: _as_int(k, v, 0),
    "cv_fold": lambda k, v: _as_int(k, v, 0),
    "conv_filters": _as_filters,
    "kernel_size": lambda k, v: _as_int(k, v, 1),
    "padding": lambda k, v: _as_choice(k, v, PADDINGS),
    "activation": lambda k, v: _as_choice(k, v, ACTIVATIONS),
    "leaky_relu_slope": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=True),
    "dense_units": lambda k, v: _as_int(k, v, 1),
    "dropout": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=True),
    "batch_norm": _as_bool,
    "optimizer": lambda k, v: _as_choice(k, v, OPTIMIZERS),
    "learning_rate": lambda k, v: _as_float(k, v, 1e-12, 10.0, high_open=False),
    "batch_size": lambda k, v: _as_int(k, v, 1),
    "epochs": lambda k, v: _as_int(k, v, 1),
    "train_images_per_epoch": lambda k, v: _as_int(k, v, 0),
    "seed": lambda k, v: _as_int(k, v, 0),
    "augment_shear_degrees": lambda k, v: _as_float(k, v, 0.0, 89.0, high_open=False),
    "augment_zoom": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=True),
    "augment_flip": _as_bool,
    "augment_rotate_degrees": lambda k, v: _as_float(k, v, 0.0, 180.0, high_open=False),
    "augment_shift": lambda k, v: _as_float(k, v, 0.0, 0.5, high_open=False),
    "augment_cutout": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=False),
    "augment_scale": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=False),
    "augment_grayscale": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=False),
    "augment_brightness": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=True),
    "augment_contrast": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=True),
    "augment_saturation": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=False),
    "augment_blur": lambda k, v: _as_float(k, v, 0.0, 3.0, high_open=False),
    "input_grayscale": _as_bool,
    "mixup_alpha": lambda k, v: _as_float(k, v, 0.0, 10.0, high_open=False),
    "lr_schedule": lambda k, v: _as_choice(k, v, LR_SCHEDULES),
    "weight_decay": lambda k, v: _as_float(k, v, 0.0, 1.0, high_open=False),
    "label_smoothing": lambda k, v: _as_float(k, v, 0.0, 0.5, high_open=True),
    "early_stopping_patience": lambda k, v: _as_int(k, v, 0),
    "tta_flip": _as_bool,
    "precision": lambda k, v: _as_choice(k, v, PRECISIONS),
    "deterministic": _as_bool,
}


def _raise(error: Exception) -> Any:
    raise error


def params_from_dict(raw: dict[str, Any], *, source: str = "params.yaml") -> Params:
    """Validate a flat mapping of hyperparameters; unknown keys are kept in ``extra``."""
    values: dict[str, Any] = {}
    for key, validate in _VALIDATORS.items():
        if key in raw:
            try:
                values[key] = validate(key, raw[key])
            except AgegapError as error:
                raise AgegapError(str(error).replace("params.yaml", source, 1)) from None
    extra = {k: v for k, v in raw.items() if k not in _VALIDATORS}
    params = Params(**values, extra=extra)
    _check_folds(params)
    _check_architecture(params)
    return params


def _check_folds(params: Params) -> None:
    if params.cv_folds == 1:
        raise _fail("cv_folds", 1, "0 (no cross-validation) or at least 2")
    if params.cv_folds and params.cv_fold >= params.cv_folds:
        raise _fail("cv_fold", params.cv_fold, f"a fold from 0 to {params.cv_folds - 1}")


def _check_architecture(params: Params) -> None:
    """Refuse a network whose feature maps would shrink to nothing before training starts."""
    side = params.image_size
    for depth, _ in enumerate(params.conv_filters, start=1):
        if params.padding == "valid":
            side -= params.kernel_size - 1
        if side < 1:
            raise AgegapError(
                f"params.yaml: kernel_size={params.kernel_size} with padding='valid' and "
                f"{len(params.conv_filters)} conv blocks shrinks a {params.image_size}px image "
                f"to nothing at block {depth}: use a smaller kernel, padding 'same' or fewer blocks"
            )
        side //= 2
        if side < 1:
            raise AgegapError(
                f"params.yaml: conv_filters={list(params.conv_filters)} has too many blocks for "
                f"image_size={params.image_size}: each block halves the image"
            )


def read_params_mapping(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """``params.yaml`` as the flat mapping it holds, unvalidated (a one-line error if broken).

    The flows merge ``dvc exp run -S`` overrides into this before validating them.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AgegapError(f"{path}: no such parameters file") from None
    except yaml.YAMLError as error:
        first_line = str(error).splitlines()[0] if str(error) else "syntax error"
        raise AgegapError(f"{path}: not valid YAML: {first_line}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise AgegapError(f"{path}: expected a mapping of flat keys, got {type(raw).__name__}")
    return raw


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml`` (a missing key takes its default)."""
    return params_from_dict(read_params_mapping(path), source=str(path))


def project_tta_flip(path: Path | str = PARAMS_FILE) -> bool:
    """``tta_flip`` of the project whose ``params.yaml`` is at ``path``; off without one.

    So that ``agegap score data/split/test``, run in the project, scores as the evaluate
    stage did without the user having to know which scoring the recipe uses.
    """
    return Path(path).is_file() and load_params(path).tta_flip


def param_names() -> tuple[str, ...]:
    """Names of all known hyperparameters, in ``params.yaml`` order."""
    return tuple(f.name for f in dataclasses.fields(Params) if f.name != "extra")
