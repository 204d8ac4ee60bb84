"""One typed, validated view of ``params.yaml``: :class:`Params` is the one schema, from
which every stage, every error message and docs/params.md's parameter table are derived.
"""

from __future__ import annotations

import argparse
import difflib
import subprocess
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic.fields import FieldInfo

from agegap import JPEG_QUALITIES
from agegap.errors import AgegapError

PARAMS_FILE = Path("params.yaml")

SplitStrategy = Literal["identity", "image"]
Padding = Literal["same", "valid"]
Activation = Literal["relu", "prelu", "leaky_relu"]
Architecture = Literal["blog", "residual"]
Optimizer = Literal["rmsprop", "adam", "sgd"]
LrSchedule = Literal["constant", "cosine"]
Precision = Literal["auto", "float32", "mixed_bfloat16"]

SPLIT_STRATEGIES: tuple[str, ...] = get_args(SplitStrategy)
PADDINGS: tuple[str, ...] = get_args(Padding)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)

BLOG_DATA_URL = "http://www.ivl.disco.unimib.it/wp-content/uploads/2016/09/LAGdataset_100.zip"


def _stripped(value: object) -> object:
    """YAML's empty value (``data_sha256:``) means ''; surrounding spaces are a slip."""
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else value


def _hex_digest(value: object) -> object:
    value = _stripped(value)
    return value.lower() if isinstance(value, str) else value


def _list_as_tuple(value: object) -> object:
    """YAML gives a list; the typed value is a tuple, so that Params stays hashable."""
    return tuple(value) if isinstance(value, list) else value


def _allowed(text: str) -> dict[str, Any]:
    """What an error says is allowed, where the type and bounds alone do not say it."""
    return {"allowed": text}


PositiveInts = Annotated[
    tuple[Annotated[int, Field(ge=1)], ...], BeforeValidator(_list_as_tuple)
]


class Params(BaseModel):
    """All hyperparameters, flat like ``params.yaml``; defaults are the robust recipe.

    That is the blog's best network with batch norm and cutout, trained 200 epochs of the
    whole train split under cosine decay, on photographs changed as the robustness probes
    change them (black and white, jitter, scale, blur): the `accuracy` study's
    `blog+batchnorm+cosine+fullepochs+cutout+gray+jitter+scale0.3+blur+200epochs` row,
    chosen by reports/robustness.md's rule. The other levers are off by default.

    Strict on purpose: ``true`` is not an integer, ``"0.1"`` is not a number, and an
    unknown key (a typo such as ``droput``) is refused rather than trained as the
    default. Constructing one validates too, so code cannot build a network the
    stages would refuse.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, allow_inf_nan=False, validate_default=False
    )

    # data
    data_url: Annotated[str, BeforeValidator(_stripped)] = Field(
        BLOG_DATA_URL, min_length=1, json_schema_extra=_allowed("a URL or a path"),
        description="http(s) URL, `file://` URL or path of `LAGdataset_100.zip`",
    )
    data_sha256: Annotated[str, BeforeValidator(_hex_digest)] = Field(
        "", pattern="^([0-9a-f]{64})?$",
        json_schema_extra=_allowed("64 hexadecimal digits, or '' to skip the check"),
        description="expected SHA-256 of the archive; empty = not checked",
    )
    image_size: int = Field(
        100, ge=8, description="side of the square network input (LAG is 100x100)"
    )
    # split
    split_strategy: SplitStrategy = Field(
        "identity",
        description="`identity`: each person in one split; `image`: random per image (the blog)",
    )
    split_seed: int = Field(0, ge=0, description="seed of the split")
    train_per_class: int = Field(1200, ge=1, description="training images per class (the blog's)")
    validation_per_class: int = Field(
        600, ge=1, description="validation images per class (the blog's)"
    )
    test_per_class: int = Field(
        110, ge=1,
        description="test images per class (the blog's); the test split takes what remains",
    )
    cv_folds: int = Field(
        0, ge=0,
        description="k-fold cross-validation (`0` = off): the test split is fold `cv_fold` of "
        "`cv_folds` folds of whole persons (under `identity`), so k runs test every image "
        "once; `test_per_class` is then unused",
    )
    cv_fold: int = Field(0, ge=0, description="which fold is the test split, from 0 to k - 1")
    # model
    architecture: Architecture = Field(
        "blog",
        description="*accuracy lever*: `blog`, a Conv-activation-MaxPool block per "
        "`conv_filters` entry, flattened into a dense layer; `residual`, two convolutions "
        "with a shortcut around them per entry, then global average pooling (He et al., "
        "2016; needs padding `same`)",
    )
    conv_filters: PositiveInts = Field(
        (32, 32, 64), min_length=1,
        json_schema_extra=_allowed("a non-empty list of positive integers, e.g. [32, 32, 64]"),
        description="one Conv-activation-MaxPool block per entry (`[32, 32, 64, 128]` is the "
        "blog's \"deeper\")",
    )
    kernel_size: int = Field(5, ge=1, description="convolution kernel side")
    padding: Padding = Field("same", description="convolution padding")
    activation: Activation = Field(
        "relu", description="activation of each conv block; `prelu` shares its slope across space"
    )
    leaky_relu_slope: float = Field(
        0.001, ge=0.0, lt=1.0, description="negative slope of `leaky_relu`"
    )
    dense_units: int = Field(64, ge=1, description="units of the hidden dense layer")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the output")
    batch_norm: bool = Field(
        True,
        description="*accuracy lever, on by default*: batch normalisation after each "
        "convolution (slower epochs)",
    )
    # training
    optimizer: Optimizer = Field("adam", description="the optimizer")
    learning_rate: float = Field(
        0.001, ge=1e-12, le=10.0, description="the optimizer's (initial) learning rate"
    )
    batch_size: int = Field(16, ge=1, description="images per training step")
    epochs: int = Field(200, ge=1, description="training epochs; the best one is kept")
    train_images_per_epoch: int = Field(
        0, ge=0,
        description="images per epoch, as the blog's `steps_per_epoch=1200//16`; `0` = the "
        "whole train split",
    )
    seed: int = Field(
        0, ge=0, description="seed of weights, dropout, augmentation and batch order"
    )
    augment_shear_degrees: float = Field(
        0.2, ge=0.0, le=89.0,
        description="shear range in degrees (Keras 2's meaning of `shear_range=0.2`)",
    )
    augment_zoom: float = Field(
        0.2, ge=0.0, lt=1.0, description="zoom range, drawn independently per axis"
    )
    augment_flip: bool = Field(True, description="random horizontal flip")
    augment_rotate_degrees: float = Field(
        0.0, ge=0.0, le=180.0,
        description="*accuracy lever*: rotation range in degrees (`0` = off, the blog)",
    )
    augment_shift: float = Field(
        0.0, ge=0.0, le=0.5,
        description="*accuracy lever*: shift range, a fraction of the side (`0` = off, the blog)",
    )
    augment_cutout: float = Field(
        0.4, ge=0.0, le=1.0,
        description="*accuracy lever, on by default*: cutout, one square of this fraction of "
        "the side hidden per training image, filled with its mean colour (`0` = off, the blog)",
    )
    augment_scale: float = Field(
        0.3, ge=0.0, le=1.0,
        description="robustness: the face's scale times a random factor in [1/(1+x), 1+x], "
        "both axes alike (a tighter or looser crop); what comes from outside the image is a "
        "flat random colour (`0` = off)",
    )
    augment_grayscale: float = Field(
        0.5, ge=0.0, le=1.0,
        description="robustness: the share of training images turned black and white "
        "(`0` = off)",
    )
    augment_brightness: float = Field(
        0.3, ge=0.0, lt=1.0,
        description="robustness: a random brightness factor in [1 − x, 1 + x], as PIL's "
        "`ImageEnhance` (`0` = off)",
    )
    augment_contrast: float = Field(
        0.3, ge=0.0, lt=1.0,
        description="robustness: a random contrast factor in [1 − x, 1 + x] (`0` = off)",
    )
    augment_saturation: float = Field(
        0.5, ge=0.0, le=1.0,
        description="robustness: a random saturation factor in [1 − x, 1 + x] (`0` = off)",
    )
    augment_blur: float = Field(
        1.0, ge=0.0, le=3.0,
        description="robustness: a Gaussian blur of random sigma up to this many pixels "
        "(`0` = off)",
    )
    augment_jpeg: float = Field(
        0.0, ge=0.0, le=1.0,
        description="robustness: the share of training images saved again as JPEG, at a "
        f"random quality from {JPEG_QUALITIES[0]} to {JPEG_QUALITIES[1]} (`0` = off; needs "
        "the TensorFlow backend)",
    )
    input_grayscale: bool = Field(
        False,
        description="the network sees every image in black and white, in training and in use",
    )
    mixup_alpha: float = Field(
        0.0, ge=0.0, le=10.0,
        description="*accuracy lever*: mixup, each training image blended with another of its "
        "batch and their labels likewise, the weight drawn from Beta(α, α); `0` = off",
    )
    lr_schedule: LrSchedule = Field(
        "cosine",
        description="*accuracy lever, on by default*: `cosine` decays `learning_rate` to 0 "
        "over all epochs; `constant` keeps it (the blog)",
    )
    weight_decay: float = Field(
        0.0, ge=0.0, le=1.0,
        description="*accuracy lever*: decoupled (AdamW-style) weight decay; `0` = off",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5,
        description="*accuracy lever*: targets 0/1 become x/2 and 1 - x/2; `0` = off",
    )
    ensemble_size: int = Field(
        1, ge=1, le=16,
        description="*accuracy lever*: k networks, trained with seeds `seed` to `seed + k - 1`, "
        "each keeping its best epoch; the saved model averages their P(young); `1` = one network",
    )
    weight_ema: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="*accuracy lever*: an exponential moving average of the weights, with "
        "this momentum per training step (e.g. `0.999`), is what is validated, kept and "
        "saved; `0` = off (the weights as trained)",
    )
    early_stopping_patience: int = Field(
        0, ge=0,
        description="stop when `val_accuracy` has not improved for this many epochs; "
        "`0` = never",
    )
    # evaluation
    tta_flip: bool = Field(
        False,
        description="*accuracy lever*: `evaluate` averages each test image's prediction with "
        "its mirror image's",
    )
    precision: Precision = Field(
        "auto",
        description="numeric precision; `auto`: bfloat16 on a GPU or, under TensorFlow, on a CPU "
        "that multiplies it natively (AMX, avx512_bf16), float32 elsewhere",
    )
    deterministic: bool = Field(
        True,
        description="TensorFlow op determinism: the same params give the same metrics on CPU",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(
        cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Params:
        """Pydantic's report, several lines per error, becomes the first error in one line.

        The source (the file the values came from) is passed as validation context by
        :func:`params_from_dict`; ``Params(...)`` in code names itself.
        """
        source = (info.context or {}).get("source", "Params")
        try:
            params = handler(data)
        except ValidationError as error:
            raise _one_line(error, data, source) from None
        _check_folds(params, source)
        _check_architecture(params, source)
        return params


class ParamError(AgegapError):
    """A refused parameter; ``keys`` names the ones at fault.

    So that :func:`load_params` can tell whether the file's value of those keys is
    the committed one, and say how to restore it when it is not.
    """

    def __init__(self, message: str, keys: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


def _one_line(error: ValidationError, data: Any, source: str) -> ParamError:
    """The first error, unknown keys first: a typo is likelier the cause than its neighbour."""
    unknown = ("extra_forbidden", "invalid_key")  # invalid_key: a key that is not a string
    problems = sorted(error.errors(), key=lambda problem: problem["type"] not in unknown)
    problem = problems[0]
    if not problem["loc"] or not isinstance(data, dict):
        return ParamError(
            f"{source}: expected a mapping of parameter names to values, got "
            f"{type(data).__name__}"
        )
    key = problem["loc"][0]
    if problem["type"] in unknown:
        close = difflib.get_close_matches(str(key), param_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ParamError(f"{source}: unknown parameter {key!r}{hint}", (str(key),))
    return ParamError(
        f"{source}: {key}={data[key]!r} is invalid: expected {allowed_values(str(key))}",
        (str(key),),
    )


def allowed_values(name: str) -> str:
    """What ``name`` accepts, in words, from its type and bounds in the schema."""
    info = Params.model_fields[name]
    extra = info.json_schema_extra
    if isinstance(extra, dict) and "allowed" in extra:
        return str(extra["allowed"])
    kind = info.annotation
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(get_args(kind))
    if kind is bool:
        return "true or false"
    low, high, high_open = _bounds(info)
    if kind is int:
        return "an integer" + (f" >= {low}" if low is not None else "")
    if kind is float:
        return f"a number in [{float(low)}, {float(high)}{')' if high_open else ']'}"
    return "a string"


def _bounds(info: FieldInfo) -> tuple[Any, Any, bool]:
    """``(ge, le or lt, whether the upper bound is open)`` of a field's constraints."""
    low = high = None
    high_open = False
    for constraint in info.metadata:
        low = getattr(constraint, "ge", low)
        if getattr(constraint, "le", None) is not None:
            high = constraint.le
        if getattr(constraint, "lt", None) is not None:
            high, high_open = constraint.lt, True
    return low, high, high_open


def _check_folds(params: Params, source: str) -> None:
    keys = ("cv_folds", "cv_fold")
    if params.cv_folds == 1:
        raise ParamError(
            f"{source}: cv_folds=1 is invalid: expected 0 (no cross-validation) or at least 2",
            keys,
        )
    if params.cv_folds and params.cv_fold >= params.cv_folds:
        raise ParamError(
            f"{source}: cv_fold={params.cv_fold!r} is invalid: expected a fold from 0 to "
            f"{params.cv_folds - 1}",
            keys,
        )


def _check_architecture(params: Params, source: str) -> None:
    """Refuse a network whose feature maps would shrink to nothing before training starts."""
    keys = ("image_size", "conv_filters", "kernel_size", "padding")
    if params.architecture == "residual" and params.padding != "same":
        raise ParamError(
            f"{source}: architecture='residual' needs padding='same': a shortcut is added to "
            "its block's output, so both must keep the same size",
            ("architecture", "padding"),
        )
    side = params.image_size
    for depth, _ in enumerate(params.conv_filters, start=1):
        if params.padding == "valid":
            side -= params.kernel_size - 1
        if side < 1:
            raise ParamError(
                f"{source}: kernel_size={params.kernel_size} with padding='valid' and "
                f"{len(params.conv_filters)} conv blocks shrinks a {params.image_size}px image "
                f"to nothing at block {depth}: use a smaller kernel, padding 'same' or fewer "
                "blocks",
                keys,
            )
        side //= 2
        if side < 1:
            raise ParamError(
                f"{source}: conv_filters={list(params.conv_filters)} has too many blocks for "
                f"image_size={params.image_size}: each block halves the image",
                keys,
            )


def params_from_dict(raw: dict[str, Any], *, source: str = "params.yaml") -> Params:
    """Validate a flat mapping of hyperparameters; a missing key takes its default.

    An unknown key is refused, with the closest known name when one is close.
    """
    return Params.model_validate(raw, context={"source": source})


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
    """Read and validate ``params.yaml`` (a missing key takes its default).

    A refused value that the file holds but its last commit does not most likely came
    from a refused ``dvc exp run -S``: DVC writes the values into the file before the
    stages run and leaves them there when a stage fails, so every later experiment
    would fail on it too. The error then says so, and how to restore the file.
    """
    raw = read_params_mapping(path)
    try:
        return params_from_dict(raw, source=str(path))
    except ParamError as error:
        committed = _committed_mapping(Path(path))
        missing = object()
        if committed is not None and any(
            raw.get(key, missing) != committed.get(key, missing) for key in error.keys
        ):
            raise ParamError(
                f"{error}; {path} holds this uncommitted change (a failed dvc exp run -S "
                f"leaves its values there): fix it or run git checkout {path}",
                error.keys,
            ) from None
        raise


def _committed_mapping(path: Path) -> dict[str, Any] | None:
    """``path`` as of git's HEAD; None without git, outside a repository or if untracked.

    Also None in a ``dvc exp run --temp`` or queued run: it works in a copy under
    ``.dvc/tmp/exps``, so the user's own params.yaml was never changed.
    """
    if "/.dvc/tmp/exps/" in path.resolve().as_posix():
        return None
    try:
        shown = subprocess.run(
            ["git", "-C", str(path.parent), "show", f"HEAD:./{path.name}"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if shown.returncode != 0:
        return None
    try:
        committed = yaml.safe_load(shown.stdout)
    except yaml.YAMLError:
        return None
    return committed if isinstance(committed, dict) else None


def project_tta_flip(path: Path | str = PARAMS_FILE) -> bool:
    """``tta_flip`` of the project whose ``params.yaml`` is at ``path``; off without one.

    So that ``agegap score data/split/test``, run in the project, scores as the evaluate
    stage did without the user having to know which scoring the recipe uses.
    """
    return Path(path).is_file() and load_params(path).tta_flip


def param_names() -> tuple[str, ...]:
    """Names of all known hyperparameters, in ``params.yaml`` order."""
    return tuple(Params.model_fields)


def _yaml_scalar(value: object) -> str:
    """A default as params.yaml spells it (``false``, ``''``, ``[32, 32, 64]``)."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix(
        "\n...\n"
    ).strip()


def markdown_table() -> str:
    """docs/params.md's parameter table: every key once, with its default, range and meaning."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for name, info in Params.model_fields.items():
        rows.append(
            f"| `{name}` | `{_yaml_scalar(info.default)}` | {allowed_values(name)} "
            f"| {info.description} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agegap.params", description="The parameter schema, as documentation."
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print docs/params.md's parameter table"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
