"""``agegap serve`` against a real uvicorn server on a free local port, with a tiny model.

The server runs as the installed command in its own process, in a folder laid out like
a project (``dvc.lock``, ``metrics.json``, ``models/model.keras``), with its own
``TMPDIR`` so the tests can see that no upload is left behind. The micro-batcher is
tested on its own, with a stand-in for the model.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from agegap.batching import MicroBatcher
from agegap.model_identity import file_hashes, model_identity
from tests.test_cli import (
    MODEL_SIZE,
    draw_face,
    header_only_png,
    noise,
    predict_json,
    save_bytes,
    two_faces,
)

MAX_UPLOAD_MB = 3  # small enough to test, over Starlette's 1 MB in-memory spool
MAX_FILES = 4
METRICS = {"accuracy": 0.875, "loss": 0.31, "roc_auc": 0.93}


@dataclass
class Server:
    """A running ``agegap serve``: its address, its scratch folder and its log so far."""

    url: str
    process: subprocess.Popen[str]
    tmpdir: Path
    log: list[str]

    def client(self, **options: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **options)  # type: ignore[arg-type]


def start_server(folder: Path, model: Path, *extra: str) -> Server:
    """``agegap serve --port 0`` in ``folder``; returns once uvicorn says where it listens."""
    tmpdir = folder / "server-tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    command = [sys.executable, "-m", "agegap.cli", "serve", "--model", str(model), "--port", "0"]
    process = subprocess.Popen(
        [*command, *extra],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    found = threading.Event()
    address: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            log.append(line)
            if "Uvicorn running on " in line and not found.is_set():
                address.append(line.split("Uvicorn running on ")[1].split()[0])
                found.set()
        found.set()  # the process ended: stop waiting

    threading.Thread(target=read, daemon=True).start()
    found.wait(timeout=300)
    if not address:
        process.kill()
        raise AssertionError("agegap serve did not start:\n" + "".join(log))
    return Server(address[0], process, tmpdir, log)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def lock_project(folder: Path, model: Path) -> None:
    """A ``dvc.lock`` and ``metrics.json`` that record ``model`` as DVC would."""
    md5 = file_hashes(model)[0]
    (folder / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    metrics_md5 = file_hashes(folder / "metrics.json")[0]
    lock = {
        "schema": "2.0",
        "stages": {
            "train": {
                "cmd": "python -m stages.train",
                "params": {"params.yaml": {"image_size": 32, "dropout": 0.1}},
                "outs": [{"path": "models/model.keras", "hash": "md5", "md5": md5}],
            },
            "evaluate": {
                "cmd": "python -m stages.evaluate",
                "deps": [{"path": "models/model.keras", "hash": "md5", "md5": md5}],
                "outs": [{"path": "metrics.json", "hash": "md5", "md5": metrics_md5}],
            },
        },
    }
    (folder / "dvc.lock").write_text(yaml.safe_dump(lock), encoding="utf-8")


def save_tiny_model(path: Path) -> Path:
    """A one-block network with its initial weights: agreement needs no training."""
    from agegap.model import build_model
    from agegap.params import Params

    path.parent.mkdir(parents=True, exist_ok=True)
    build_model(Params(image_size=MODEL_SIZE, conv_filters=(4,), dense_units=4)).save(path)
    return path


def make_project(folder: Path) -> Path:
    """``folder`` with ``models/model.keras``, recorded in a ``dvc.lock`` with its metrics."""
    model = save_tiny_model(folder / "models" / "model.keras")
    lock_project(folder, model)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def tiny_model(project: Path) -> Path:
    return project / "models" / "model.keras"


@pytest.fixture(scope="module")
def server(project: Path) -> Iterator[Server]:
    running = start_server(
        project,
        project / "models" / "model.keras",
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--max-files",
        str(MAX_FILES),
    )
    yield running
    stop_server(running)


def post(client: httpx.Client, files: list[tuple[str, bytes]], **query: str) -> httpx.Response:
    return client.post(
        "/predict", params=query, files=[("image", (name, data)) for name, data in files]
    )


def pictures(folder: Path) -> dict[str, bytes]:
    """Named test pictures, also written into ``folder`` for ``agegap predict``."""
    named = {
        "face.png": save_bytes(draw_face(), "PNG"),
        "two faces.jpg": save_bytes(two_faces(), "JPEG", quality=95),
        "noise.png": save_bytes(noise(), "PNG"),
        "small.png": save_bytes(draw_face(100), "PNG"),
    }
    folder.mkdir(exist_ok=True)
    for name, data in named.items():
        (folder / name).write_bytes(data)
    return named


# --- the model's identity --------------------------------------------------------------


@pytest.mark.slow
def test_model_and_health_name_the_locked_experiment(server: Server, project: Path) -> None:
    md5 = file_hashes(project / "models" / "model.keras")[0]
    with server.client() as client:
        health = client.get("/health").json()
        model = client.get("/model").json()
    assert health["status"] == "ok" and health["model"] == f"md5:{md5[:12]}"
    assert model["md5"] == md5 and model["stage"] == "train"
    assert model["params"] == {"image_size": 32, "dropout": 0.1}
    assert model["metrics"] == METRICS
    assert model["input_size"] == [32, 32]
    assert model["limits"]["max_upload_mb"] == MAX_UPLOAD_MB


@pytest.mark.slow
def test_identity_of_a_model_dvc_lock_does_not_vouch_for(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "models").mkdir()
    model = tmp_path / "models" / "model.keras"
    shutil.copyfile(tiny_model, model)
    lock_project(tmp_path, model)
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.1}', encoding="utf-8")
    changed = model_identity(model)
    assert changed["id"].startswith("md5:") and changed["metrics"] is None  # metrics rewritten
    model.write_bytes(model.read_bytes() + b"\0")
    retrained = model_identity(model)
    assert retrained["id"].startswith("sha256:") and retrained["params"] is None
    assert "differs" in retrained["note"]
    alone = tmp_path / "elsewhere" / "model.keras"
    alone.parent.mkdir()
    shutil.copyfile(tiny_model, alone)
    (tmp_path / "dvc.lock").unlink()
    assert "no dvc.lock" in model_identity(alone)["note"]


# --- predictions agree with agegap predict ----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [[], ["--no-detect-faces"], ["--tta-flip"]],
    ids=["faces", "whole-images", "tta-flip"],
)
def test_answers_equal_agegap_predict_to_the_last_digit(
    server: Server,
    tmp_path: Path,
    tiny_model: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
) -> None:
    named = pictures(tmp_path / "pictures")
    folder = tmp_path / "pictures"
    query = {
        "detect_faces": str("--no-detect-faces" not in options).lower(),
        "tta_flip": str("--tta-flip" in options).lower(),
    }

    def command_rows(*names: str) -> list[dict]:
        status, rows, _ = predict_json(capsys, tiny_model, *(folder / n for n in names), *options)
        assert status == 0
        for row in rows:
            row["file"] = Path(row["file"]).name
            del row["error"]
        return rows

    def served_rows(response: httpx.Response) -> list[dict]:
        assert response.status_code == 200, response.text
        rows = []
        for image in response.json()["images"]:
            for face in image["faces"]:
                assert face.pop("face_found") == (face["face"] == "detected")
                rows.append({"file": image["file"], **face})
        return rows

    with server.client() as client:
        # the files of one request share a model call, as the files of one command do
        together = post(client, list(named.items()), **query)
        assert served_rows(together) == command_rows(*named)  # to the last digit
        for name, data in named.items():
            assert served_rows(post(client, [(name, data)], **query)) == command_rows(name)
    answer = together.json()
    assert answer["detect_faces"] == (query["detect_faces"] == "true")
    assert answer["tta_flip"] == (query["tta_flip"] == "true")
    assert answer["images"][1]["file"] == "two faces.jpg"
    assert (answer["images"][1]["width"], answer["images"][1]["height"]) == two_faces().size


# --- bad input and limits ----------------------------------------------------------------


def bad_requests() -> list[tuple[str, list[tuple[str, bytes]], int, str]]:
    """(what, files, expected status, text the error must contain)."""
    good = save_bytes(draw_face(), "PNG")
    return [
        ("text", [("notes.txt", b"not an image at all")], 415, "notes.txt: not an image"),
        (
            "bytes",
            [("big.png", b"\x89PNG" + os.urandom(MAX_UPLOAD_MB * 1_000_000))],
            413,
            "big.png",
        ),
        ("bomb", [("bomb.png", header_only_png(20_000, 20_000))], 413, "decompression bomb"),
        ("pixels", [("wide.png", header_only_png(8_000, 8_000))], 413, "wide.png: image too large"),
        ("truncated", [("cut.png", good[: len(good) // 2])], 422, "cut.png: cannot decode"),
        ("empty file", [("zero.jpg", b"")], 422, "zero.jpg: empty file"),
        ("one bad of two", [("ok.png", good), ("bad.png", good[:-40])], 422, "bad.png"),
    ]


@pytest.mark.slow
def test_bad_input_gets_its_status_and_names_the_file(server: Server) -> None:
    with server.client() as client:
        for what, files, status, text in bad_requests():
            response = post(client, files)
            assert response.status_code == status, (what, response.text)
            assert text in response.json()["error"], what
            assert "\n" not in response.json()["error"]
        empty = client.post("/predict")
        form_without_file = client.post("/predict", data={"note": "no file"})
        too_many = post(client, [(f"{i}.png", b"x") for i in range(MAX_FILES + 1)])
        bad_option = post(client, [("face.png", b"x")], detect_faces="maybe")
        assert client.get("/health").json()["status"] == "ok"
    assert empty.status_code == 422 and "no image" in empty.json()["error"]
    assert form_without_file.status_code == 422
    assert too_many.status_code == 400 and "Too many files" in too_many.json()["error"]
    assert bad_option.status_code == 422
    assert bad_option.json()["error"].startswith("detect_faces: ")


@pytest.mark.slow
def test_request_body_over_the_limit_is_refused_before_it_is_read(server: Server) -> None:
    limit = MAX_FILES * MAX_UPLOAD_MB * 1_000_000 + 1_000_000
    part = b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    body = part + os.urandom(limit)
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    with server.client() as client:
        declared = client.post("/predict", content=body, headers=headers)
        chunked = client.post(
            "/predict",
            content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
            headers=headers,
        )
    assert declared.status_code == 413 and "request body over" in declared.json()["error"]
    assert chunked.status_code == 413


@pytest.mark.slow
def test_bad_and_good_requests_at_once_do_not_disturb_each_other(server: Server) -> None:
    good = [("face.png", save_bytes(draw_face(), "PNG"))]
    jobs = [(good, 200, "")] * 12 + [
        (files, status, what) for what, files, status, _ in bad_requests()
    ]
    jobs = jobs[::2] + jobs[1::2]  # interleaved
    with server.client() as client:
        reference = post(client, good).json()["images"]
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(lambda job: post(client, job[0]), jobs))
        assert client.get("/health").json()["status"] == "ok"
    for (_, status, what), response in zip(jobs, responses, strict=True):
        assert response.status_code == status, (what, response.text)
        if status == 200:  # the same rows; P(young) as in a batch of other requests' crops
            [image] = response.json()["images"]
            for face, expected in zip(image["faces"], reference[0]["faces"], strict=True):
                assert face["p_young"] == pytest.approx(expected["p_young"], rel=1e-6)
                assert {**face, "p_young": 0, "probability": 0} == {
                    **expected,
                    "p_young": 0,
                    "probability": 0,
                }


@pytest.mark.slow
def test_no_upload_outlives_its_request(server: Server) -> None:
    big = save_bytes(noise(900, 700, seed=3), "PNG")  # over Starlette's 1 MB memory spool
    assert len(big) > 1_100_000
    with server.client() as client:
        assert post(client, [("big.png", big), ("face.png", big)]).status_code == 200
        assert post(client, [("bad.txt", b"words" * 300_000)]).status_code == 415
    assert list(server.tmpdir.iterdir()) == []


# --- the page and the schema -------------------------------------------------------------


@pytest.mark.slow
def test_page_and_schema_need_nothing_from_the_internet(server: Server) -> None:
    with server.client() as client:
        page = client.get("/")
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text
    assert "/predict" in page.text and "/openapi.json" in page.text
    assert {"/predict", "/model", "/health"} <= set(schema["paths"])
    assert docs.status_code == 404  # FastAPI's docs page would fetch its scripts from a CDN


# --- starting ---------------------------------------------------------------------------


@pytest.mark.slow
def test_missing_or_broken_model_stops_the_start_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not a keras archive")
    for model, reason in (
        (tmp_path / "none.keras", "no such model file"),
        (broken, "not a loadable"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "agegap.cli", "serve", "--model", str(model), "--port", "0"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and reason in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# --- the micro-batcher ------------------------------------------------------------------


def test_concurrent_callers_share_one_model_call() -> None:
    calls: list[tuple[int, bool]] = []

    def score(images: np.ndarray, tta_flip: bool) -> np.ndarray:
        calls.append((len(images), tta_flip))
        return images[:, 0, 0, 0].astype(np.float64) + (1000 if tta_flip else 0)

    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(score, max_images=256, max_wait_s=0.001)
        await batcher.start()
        try:
            crops = [np.full((1 + i % 3, 2, 2, 3), i, np.uint8) for i in range(10)]
            return await asyncio.gather(
                *(batcher.probabilities(c, tta_flip=i == 4) for i, c in enumerate(crops))
            )
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert sorted(calls) == [(2, True), (17, False)]  # one call per TTA setting, not per caller
    for index, result in enumerate(results):
        assert result.tolist() == [index + (1000 if index == 4 else 0)] * (1 + index % 3)


def test_a_failing_model_call_fails_its_callers_and_the_batcher_goes_on() -> None:
    failures = iter([True, False])

    def score(images: np.ndarray, tta_flip: bool) -> np.ndarray:
        if next(failures):
            raise RuntimeError("out of memory")
        return np.zeros(len(images))

    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(score, max_images=256, max_wait_s=0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="out of memory"):
                await batcher.probabilities(np.zeros((1, 2, 2, 3), np.uint8), tta_flip=False)
            return await batcher.probabilities(np.zeros((2, 2, 2, 3), np.uint8), tta_flip=False)
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()).tolist() == [0.0, 0.0]
