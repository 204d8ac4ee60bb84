"""``agegap serve`` under load: concurrent clients against a real server on this machine.

What is measured, and how to run it: docs/performance.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agegap.machine import cpu_name  # noqa: E402
from bench.predict_speed import load_or_build, time_predict, write_images  # noqa: E402

BOUNDARY = "agegap-bench-boundary"
GOAL_SHARE = 0.40  # of offline images/s, single crops, 8 clients
GOAL_P99_MS = 250.0


def multipart(name: str, data: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def client(
    port: int, path: str, files: list[tuple[str, bytes]], requests: int, offset: int, start: Any
) -> dict[str, Any]:
    """One client process: ``requests`` requests one after another on one connection."""
    bodies = [(name, multipart(name, data)) for name, data in files]
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies, errors, answers = [], [], {}
    start.wait()
    began = time.perf_counter()
    for index in range(requests):
        name, body = bodies[(offset + index) % len(bodies)]
        sent = time.perf_counter()
        try:
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"{name}: {type(error).__name__}: {error}")
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            continue
        latencies.append(time.perf_counter() - sent)
        if response.status != 200:
            errors.append(f"{name}: HTTP {response.status}: {payload[:200]!r}")
        elif name not in answers:
            answers[name] = json.loads(payload)["images"][0]["faces"]
    return {
        "began": began,
        "ended": time.perf_counter(),
        "latencies": latencies,
        "errors": errors,
        "answers": answers,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def start_server(model: Path, batch_wait_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, "-m", "agegap.cli", "serve", "--model", str(model)]
    options = ["--port", str(port), "--log-level", "warning", "--batch-wait-ms", str(batch_wait_ms)]
    server = subprocess.Popen([*command, *options], cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"agegap serve exited with status {server.returncode}")
        try:
            get_json(port, "/health")
            return server, port
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("agegap serve did not answer /health within 300 s")


def peak_memory_mb(pid: int) -> float:
    """Peak resident memory of a process so far (Linux's VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(
    port: int, path: str, files: list[tuple[str, bytes]], clients: int, requests: int
) -> dict[str, Any]:
    """``clients`` processes at once; their results pooled."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(clients) as pool:
        start = manager.Event()
        pending = [
            pool.apply_async(client, (port, path, files, requests, k * 7, start))
            for k in range(clients)
        ]
        time.sleep(1.0)  # every client connected and waiting
        start.set()
        results = [job.get(timeout=3600) for job in pending]
    latencies = sorted(s for r in results for s in r["latencies"])
    seconds = max(r["ended"] for r in results) - min(r["began"] for r in results)
    answers: dict[str, Any] = {}
    for result in results:
        answers.update(result["answers"])
    return {
        "requests": clients * requests,
        "seconds": seconds,
        "errors": [e for r in results for e in r["errors"]],
        "percentiles_ms": {
            p: 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]
            for p in (50, 95, 99)
        }
        if latencies
        else {},
        "answers": answers,
    }


def command_rows(model: Any, folder: Path, detect: bool) -> dict[str, list[dict]]:
    """``agegap predict``'s rows for each file of ``folder`` on its own (as one request)."""
    from agegap.predict import Source, collect, predict
    from agegap.report import prediction_dict

    rows = {}
    for entry in collect([folder]):
        assert isinstance(entry, Source)
        [(_, file_rows)] = list(predict(model, [entry], detect=detect))
        rows[entry.path.name] = [prediction_dict(row) for row in file_rows]
    return rows


def compare(served: dict[str, list[dict]], expected: dict[str, list[dict]]) -> tuple[int, float]:
    """(files whose faces, boxes or labels differ, largest |P(young) difference|)."""
    mismatched, largest = 0, 0.0
    for name, faces in served.items():
        rows = expected[name]
        same = len(faces) == len(rows) and all(
            (f["face"], f["box"], f["label"]) == (r["face"], r["box"], r["label"])
            for f, r in zip(faces, rows, strict=False)
        )
        mismatched += not same
        for face, row in zip(faces, rows, strict=False):
            largest = max(largest, abs(face["p_young"] - row["p_young"]))
    return mismatched, largest


def pictures_with_faces(folder: Path, count: int) -> None:
    """640x480 pictures, each with a drawn face at its own place and size."""
    from PIL import Image

    from tests.test_cli import draw_face

    rng = np.random.default_rng(5)
    for index in range(count):
        canvas = Image.fromarray(rng.integers(60, 200, (480, 640, 3), dtype=np.uint8))
        side = int(rng.integers(140, 300))
        canvas.paste(
            draw_face(side), (int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side)))
        )
        canvas.save(folder / f"picture_{index:03d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .keras model (default: models/model.keras)")
    parser.add_argument("--clients", type=int, default=8, help="client processes (default 8)")
    parser.add_argument("--requests", type=int, default=200, help="requests per client (200)")
    parser.add_argument("--offline-images", type=int, default=1000, help="offline batch (1000)")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, help="the server's option")
    args = parser.parse_args()

    model_path = args.model or (REPO / "models" / "model.keras")
    scratch = Path(tempfile.mkdtemp(prefix="agegap-serve-load-"))
    if model_path.is_file():
        model = load_or_build(model_path)
        described = str(model_path)
    else:
        model = load_or_build(None)
        model_path = scratch / "untrained.keras"
        model.save(model_path)
        described = (
            "the default network, untrained (no models/model.keras; speed does not depend "
            "on weights)"
        )
    print(f"cpu: {cpu_name()}")
    print(f"model: {described}")

    crops, pictures = scratch / "crops", scratch / "pictures"
    offline = scratch / "offline"
    for folder in (crops, pictures, offline):
        folder.mkdir()
    write_images(crops, 64, 100, seed=2)
    write_images(offline, args.offline_images, 100)
    pictures_with_faces(pictures, 24)

    time_predict(model, crops, detect=False)  # trace once, untimed
    seconds = min(time_predict(model, offline, detect=False)[0] for _ in range(2))
    offline_rate = args.offline_images / seconds
    print(
        f"offline batch scoring (bench/predict_speed.py, --no-detect-faces): "
        f"{args.offline_images} crops of 100x100 in {seconds:.2f} s = {offline_rate:.0f} images/s"
    )
    time_predict(model, pictures, detect=True)  # the detector's first use, untimed
    seconds = min(time_predict(model, pictures, detect=True)[0] for _ in range(2))
    print(
        f"offline with face detection (agegap predict): {len(list(pictures.iterdir()))} "
        f"pictures of 640x480 in {seconds:.2f} s = {len(list(pictures.iterdir())) / seconds:.1f} "
        "pictures/s"
    )
    expected = {
        "crops": command_rows(model, crops, detect=False),
        "pictures": command_rows(model, pictures, detect=True),
    }

    server, port = start_server(model_path, args.batch_wait_ms)
    try:
        scenarios = (
            ("crops", "100x100 crops, --no-detect-faces", "/predict?detect_faces=false"),
            ("pictures", "640x480 pictures, face detection", "/predict?detect_faces=true"),
        )
        summary = {}
        for key, label, path in scenarios:
            files = [(p.name, p.read_bytes()) for p in sorted((scratch / key).iterdir())]
            run_load(port, path, files[:2], 2, 5)  # warm the server's paths
            calls_before = get_json(port, "/health")["model_calls"]
            result = run_load(port, path, files, args.clients, args.requests)
            calls = get_json(port, "/health")["model_calls"] - calls_before
            rate = result["requests"] / result["seconds"]
            mismatched, largest = compare(result["answers"], expected[key])
            pct = result["percentiles_ms"]
            print(
                f"{label}: {args.clients} clients x {args.requests} requests of one image: "
                f"{rate:.0f} requests/s, latency p50 {pct.get(50, 0):.0f} ms, "
                f"p95 {pct.get(95, 0):.0f} ms, p99 {pct.get(99, 0):.0f} ms, "
                f"errors {len(result['errors'])}, {result['requests'] / max(calls, 1):.1f} "
                f"requests per model call; answers vs agegap predict: {len(result['answers'])} "
                f"files, {mismatched} differ in face/box/label, largest |P(young) difference| "
                f"{largest:.1e}"
            )
            for error in result["errors"][:5]:
                print(f"  error: {error}")
            summary[key] = (rate, pct.get(99, float("inf")), len(result["errors"]), mismatched)
        print(f"server peak memory (VmHWM): {peak_memory_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=60)

    shutil.rmtree(scratch, ignore_errors=True)
    rate, p99 = summary["crops"][:2]
    share = rate / offline_rate
    all_errors = sum(s[2] for s in summary.values())
    differing = sum(s[3] for s in summary.values())
    print(
        f"goals: errors {all_errors} (goal 0): {'met' if all_errors == 0 else 'NOT met'}; "
        f"single crops at {share:.0%} of offline images/s (goal >= {GOAL_SHARE:.0%}): "
        f"{'met' if share >= GOAL_SHARE else 'NOT met'}; p99 {p99:.0f} ms "
        f"(goal < {GOAL_P99_MS:.0f}): {'met' if p99 < GOAL_P99_MS else 'NOT met'}; "
        f"answers differing from agegap predict in face, box or label: {differing}"
    )


if __name__ == "__main__":
    main()
