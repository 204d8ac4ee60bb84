"""params.yaml: one schema, flat keys, one-line refusals of bad values.

The schema (``Params``) is the one source: params.yaml, dvc.yaml's ``params:`` lists and
docs/params.md's table are checked against it here, so no copy can drift from it. That
the defaults are the chosen recipe, the accuracy study's default row, is checked where
the study is (tests/test_study_plan.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from agegap.errors import AgegapError
from agegap.params import (
    Params,
    load_params,
    markdown_table,
    param_names,
    params_from_dict,
)
from tests.conftest import run, venv_bin

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_is_flat_and_matches_the_typed_defaults() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert all(not isinstance(value, dict) for value in raw.values()), "params must be flat"
    assert list(raw) == list(param_names()), "params.yaml lacks a key, or has them out of order"
    for name, value in raw.items():
        default = Params.model_fields[name].default
        assert value == (list(default) if isinstance(default, tuple) else default), name
        assert type(value) is type(default) or isinstance(default, tuple), name
    loaded = load_params(REPO / "params.yaml")
    assert loaded == Params()


def test_every_schema_key_is_read_by_a_stage() -> None:
    """A key no stage lists would change nothing DVC tracks: the run would look the same."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    read = {key for stage in dvc["stages"].values() for key in stage.get("params", [])}
    assert set(param_names()) - read == set()


def test_the_documented_table_is_the_schemas() -> None:
    documented = (REPO / "docs" / "params.md").read_text(encoding="utf-8")
    assert markdown_table() in documented, (
        "docs/params.md's parameter table differs from the schema: paste the output of "
        "`python -m agegap.params --markdown` over it"
    )
    for name in param_names():
        assert documented.count(f"| `{name}` |") == 1, name


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


DID_YOU_MEAN = "params.yaml: unknown parameter 'droput' (did you mean 'dropout'?)"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"droput": 0.3}, DID_YOU_MEAN),
        ({"learning_rat": 0.01},
         "params.yaml: unknown parameter 'learning_rat' (did you mean 'learning_rate'?)"),
        # The typo is reported even beside a bad value: it is likelier the cause.
        ({"dropout": 1.5, "droput": 0.3}, DID_YOU_MEAN),
    ],
)
def test_unknown_keys_are_refused_with_the_closest_name(raw: dict, expected: str) -> None:
    with pytest.raises(AgegapError) as caught:
        params_from_dict(raw)
    assert str(caught.value) == expected


def test_no_suggestion_when_nothing_is_close() -> None:
    with pytest.raises(AgegapError) as caught:
        params_from_dict({"xyzzy": 1})
    assert str(caught.value) == "params.yaml: unknown parameter 'xyzzy'"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", True),  # a bool is not an int
        ("epochs", 3.0),  # nor is a float
        ("batch_norm", 1),  # an int is not a bool
        ("dropout", "0.1"),  # a string is not a number
        ("dropout", False),
        ("dropout", float("nan")),
        ("learning_rate", float("inf")),
        ("conv_filters", [32, True]),
        ("conv_filters", [32, 0]),
        ("conv_filters", "32"),
        ("padding", None),
    ],
)
def test_types_are_strict(key: str, value: object) -> None:
    with pytest.raises(AgegapError, match=rf"^params\.yaml: {key}=.* is invalid: expected "):
        params_from_dict({key: value})


def test_numbers_take_ints_and_lists_become_tuples() -> None:
    params = params_from_dict({"dropout": 0, "conv_filters": [8, 16], "data_sha256": None})
    assert params.dropout == 0.0 and isinstance(params.dropout, float)
    assert params.conv_filters == (8, 16)
    assert params.data_sha256 == ""
    hash(params)  # frozen and hashable, like the dataclass it replaced


def test_the_source_names_where_the_values_came_from() -> None:
    with pytest.raises(AgegapError, match=r"^recipes\.yaml:blog: dropout=2 is invalid"):
        params_from_dict({"dropout": 2}, source="recipes.yaml:blog")


def test_constructing_params_in_code_validates_too() -> None:
    with pytest.raises(AgegapError, match=r"^Params: dropout=1\.5 is invalid: expected a number"):
        Params(dropout=1.5)
    with pytest.raises(AgegapError, match=r"^Params: unknown parameter 'droput'"):
        Params(droput=0.3)  # type: ignore[call-arg]
    with pytest.raises(AgegapError, match="too many blocks"):
        Params(image_size=16, conv_filters=(8, 8, 8, 8, 8))
    with pytest.raises(Exception, match="frozen"):
        Params().dropout = 0.2  # type: ignore[misc]


# ------------------------------------------- a refused value left in params.yaml


def _committed_project(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy2(REPO / "params.yaml", folder / "params.yaml")
    run(["git", "init", "-q", "-b", "main"], folder)
    run(["git", "add", "params.yaml"], folder)
    run(["git", "commit", "-q", "-m", "params"], folder)
    return folder


def _set(path: Path, **values: object) -> None:
    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key}:")]
        text = "\n".join([*lines, f"{key}: {value}", ""])
    path.write_text(text, encoding="utf-8")


HINT = "params.yaml holds this uncommitted change"


def test_an_uncommitted_bad_value_says_how_to_restore_the_file(tmp_path: Path) -> None:
    project = _committed_project(tmp_path / "project")
    _set(project / "params.yaml", dropout=1.5)
    with pytest.raises(AgegapError) as caught:
        load_params(project / "params.yaml")
    message = str(caught.value)
    assert message.startswith(f"{project / 'params.yaml'}: dropout=1.5 is invalid: expected")
    assert HINT in message and f"git checkout {project / 'params.yaml'}" in message
    assert "\n" not in message


def test_an_uncommitted_unknown_key_or_fold_says_so_too(tmp_path: Path) -> None:
    project = _committed_project(tmp_path / "project")
    _set(project / "params.yaml", droput=0.3)
    with pytest.raises(AgegapError, match=r"did you mean 'dropout'\?\); .*holds this"):
        load_params(project / "params.yaml")
    _committed_project(tmp_path / "folds")
    _set(tmp_path / "folds" / "params.yaml", cv_folds=3, cv_fold=0)
    load_params(tmp_path / "folds" / "params.yaml")
    _set(tmp_path / "folds" / "params.yaml", cv_folds=1)
    with pytest.raises(AgegapError, match=r"cv_folds=1 is invalid.*holds this"):
        load_params(tmp_path / "folds" / "params.yaml")


def test_no_restore_hint_when_the_commit_holds_the_bad_value_or_git_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _committed_project(tmp_path / "project")
    _set(project / "params.yaml", dropout=1.5, learning_rate=0.01)
    run(["git", "commit", "-q", "-am", "a bad value, committed"], project)
    _set(project / "params.yaml", learning_rate=0.02)  # another key changed: not the culprit
    with pytest.raises(AgegapError) as caught:
        load_params(project / "params.yaml")
    assert str(caught.value).endswith("expected a number in [0.0, 1.0)")

    outside = tmp_path / "no-git"
    outside.mkdir()
    (outside / "params.yaml").write_text("dropout: 1.5\n", encoding="utf-8")
    with pytest.raises(AgegapError) as caught:
        load_params(outside / "params.yaml")
    assert str(caught.value).endswith("expected a number in [0.0, 1.0)")

    _set(project / "params.yaml", dropout=1.25)
    monkeypatch.setenv("PATH", str(tmp_path / "no-git"))  # no git program at all
    with pytest.raises(AgegapError) as caught:
        load_params(project / "params.yaml")
    assert str(caught.value).endswith("expected a number in [0.0, 1.0)")


@pytest.mark.slow
def test_a_refused_exp_run_leaves_a_hint_for_the_next_one(make_project, synthetic_zip) -> None:
    """DVC writes ``-S`` values into params.yaml and leaves them when a stage fails."""
    project = make_project(synthetic_zip.path)
    dvc = str(venv_bin() / "dvc")
    refused = run([dvc, "exp", "run", "-S", "dropout=1.5"], project, check=False, timeout=300)
    assert refused.returncode != 0
    assert "dropout: 1.5" in (project / "params.yaml").read_text(encoding="utf-8")
    following = run(
        [dvc, "exp", "run", "-S", "learning_rate=0.01"], project, check=False, timeout=300
    )
    assert following.returncode != 0
    errors = [
        line for line in (following.stdout + following.stderr).splitlines()
        if line.startswith("error: ")
    ]
    assert errors == [
        "error: params.yaml: dropout=1.5 is invalid: expected a number in [0.0, 1.0); "
        "params.yaml holds this uncommitted change (a failed dvc exp run -S leaves its "
        "values there): fix it or run git checkout params.yaml"
    ]
    assert not (project / "data" / "raw").exists(), "the stage must fail before any work"
