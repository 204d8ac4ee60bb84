"""params.yaml: flat keys, the blog's defaults, and one-line refusals of bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agegap.errors import AgegapError
from agegap.params import Params, load_params, param_names, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_is_flat_and_matches_the_typed_defaults() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert all(not isinstance(value, dict) for value in raw.values()), "params must be flat"
    assert set(raw) == set(param_names())
    loaded = load_params(REPO / "params.yaml")
    assert loaded == Params()


def test_defaults_are_the_blogs_best_network_with_cutout() -> None:
    """Issue 8's protocol picked cutout alone; every other lever stays off by default."""
    params = Params()
    assert params.kernel_size == 5 and params.padding == "same"
    assert params.activation == "relu" and params.dense_units == 64
    assert params.dropout == 0.1 and params.optimizer == "adam"
    assert params.batch_size == 16 and params.epochs == 100
    assert params.conv_filters == (32, 32, 64)
    assert (params.augment_shear_degrees, params.augment_zoom) == (0.2, 0.2)
    assert params.augment_cutout == 0.4
    assert not params.batch_norm and params.lr_schedule == "constant" and not params.tta_flip
    assert params.augment_rotate_degrees == params.augment_shift == params.mixup_alpha == 0.0
    assert params.label_smoothing == params.weight_decay == 0.0


def test_the_blog_recipe_stays_a_row_of_the_study_and_of_the_protocol() -> None:
    """Both spell the blog's recipe out whole, so they mean it whatever the defaults are."""
    from flows.experiments import load_study

    row = next(r for r in load_study(REPO / "experiments.yaml") if r.name == "dropout-0.1")
    recipes = yaml.safe_load((REPO / "bench" / "accuracy_recipes.yaml").read_text("utf-8"))
    for recipe in (row.overrides, recipes["blog"]):
        blog = params_from_dict(recipe)
        assert (blog.kernel_size, blog.dropout, blog.optimizer) == (5, 0.1, "adam")
        assert not blog.batch_norm and blog.lr_schedule == "constant" and not blog.tta_flip
        assert blog.augment_rotate_degrees == blog.augment_shift == blog.augment_cutout == 0.0
        assert blog.mixup_alpha == 0.0
        assert blog.label_smoothing == blog.weight_decay == 0.0
        assert (blog.augment_shear_degrees, blog.augment_zoom) == (0.2, 0.2)


def test_every_protocol_recipe_is_valid_params() -> None:
    recipes = yaml.safe_load((REPO / "bench" / "accuracy_recipes.yaml").read_text("utf-8"))
    for name, overrides in recipes.items():
        assert not set(overrides) - set(param_names()), name  # a typo would be ignored
        params_from_dict(overrides, source=f"accuracy_recipes.yaml:{name}")


def test_every_stage_lists_only_known_params_and_data_stages_no_training_keys() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    known = set(param_names())
    for name, stage in dvc["stages"].items():
        listed = stage.get("params", [])
        assert set(listed) <= known, name
        assert len(listed) == len(set(listed)), name
    training_keys = set(dvc["stages"]["train"]["params"]) - {"image_size"}
    for data_stage in ("download", "split", "average_faces"):
        assert not training_keys & set(dvc["stages"][data_stage].get("params", []))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("activation", "swishy", "activation='swishy' is invalid: expected one of relu, prelu"),
        ("dropout", 1.5, "dropout=1.5 is invalid: expected a number in [0.0, 1.0)"),
        ("kernel_size", 0, "kernel_size=0 is invalid: expected an integer >= 1"),
        ("conv_filters", [], "conv_filters=[] is invalid: expected a non-empty list"),
        ("batch_size", "16", "batch_size='16' is invalid: expected an integer"),
        ("split_strategy", "person", "split_strategy='person' is invalid"),
        ("augment_flip", "yes", "augment_flip='yes' is invalid: expected true or false"),
        ("mixup_alpha", -0.2, "mixup_alpha=-0.2 is invalid: expected a number in [0.0, 10.0]"),
        ("data_sha256", "abc", "data_sha256='abc' is invalid: expected 64 hexadecimal"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_key_and_value(
    key: str, value: object, expected: str
) -> None:
    with pytest.raises(AgegapError) as caught:
        params_from_dict({key: value})
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_cross_validation_folds_are_checked() -> None:
    with pytest.raises(AgegapError, match=r"cv_folds=1 is invalid: expected 0 .* or at least 2"):
        params_from_dict({"cv_folds": 1})
    with pytest.raises(AgegapError, match=r"cv_fold=5 is invalid: expected a fold from 0 to 4"):
        params_from_dict({"cv_folds": 5, "cv_fold": 5})
    assert params_from_dict({"cv_folds": 5, "cv_fold": 4}).cv_fold == 4


def test_a_network_that_shrinks_to_nothing_is_refused() -> None:
    with pytest.raises(AgegapError, match="too many blocks"):
        params_from_dict({"image_size": 16, "conv_filters": [8, 8, 8, 8, 8]})
    with pytest.raises(AgegapError, match="padding='valid'"):
        params_from_dict({"image_size": 16, "kernel_size": 15, "padding": "valid"})


def test_broken_params_file_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("dropout: [unclosed\n", encoding="utf-8")
    with pytest.raises(AgegapError, match=r"params\.yaml: not valid YAML"):
        load_params(broken)
    with pytest.raises(AgegapError, match="no such parameters file"):
        load_params(tmp_path / "missing.yaml")
