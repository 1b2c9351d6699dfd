"""Load on the local prediction server: ``mlflow models serve`` of a registered model on 127.0.0.1, driven by
concurrent clients that each post one image at a time for a fixed time; prints throughput, latency percentiles,
failed requests and the server's memory (resident set of the server and its workers) at start and end.

    python benchmarks/serve_load.py                                   # 8 clients, 30 s, 160x120 images
    python benchmarks/serve_load.py --model models:/embedded@best --uri sqlite:///mlflow.db

Without --model, the embedded model (shipped foundation encoder, seeded head) is logged and registered in a
temporary store first, through the same MLflow flavour training uses. The server is started with a readiness
timeout and always stopped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch
from common import rss

from unimatch.apps import serving
from unimatch.apps.serving import ServingSettings, local_server
from unimatch.config import load_config
from unimatch.data import class_names
from unimatch.engine.setup import build_model
from unimatch.tracking import MlflowTracker

MIB = 1024**2
WARMUP_S = 5.0  # of concurrent requests before the first memory sample
SAMPLE_EVERY_S = 5.0


def register_embedded_model(folder: Path) -> tuple[str, str]:
    """The embedded model registered as ``serve-load`` in a sqlite store under ``folder``: (model URI, store)."""
    cfg = load_config("configs/embedded.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method, quiet=True).eval()
    settings = ServingSettings.from_config(cfg, class_names(cfg.dataset), 1)
    store = f"sqlite:///{folder / 'mlflow.db'}"
    with MlflowTracker(store, "serve-load", "serve-load") as tracker:
        tracker.log_model(model, settings.metadata(), serving, **serving.log_options(settings, cfg.dataset.crop_size))
        tracker.register_model("serve-load", 0.0, "benchmark")
    return "models:/serve-load@best", store


def server_rss(process: psutil.Process) -> int:
    """Resident bytes of the server and all its descendants (uvicorn's workers)."""
    main, children, _ = rss(process)
    return main + children


def post(url: str, body: bytes, timeout: float) -> bool:
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status == 200 and "predictions" in json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def drive(
    url: str, body: bytes, clients: int, seconds: float, sample: Callable[[], None] = lambda: None
) -> tuple[list[float], int]:
    """``clients`` threads posting ``body`` back to back for ``seconds`` (``sample`` called every
    :data:`SAMPLE_EVERY_S` meanwhile): the latencies of the answered requests and the count of failed ones."""
    latencies, failures, lock = [], [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            ok = post(url, body, timeout=max(30.0, seconds))
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(SAMPLE_EVERY_S, left))
        sample()
    for thread in threads:  # the requests in flight at the deadline
        thread.join()
    return latencies, failures[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="a registered or logged model URI (default: the embedded model, registered now)"
    )
    parser.add_argument("--uri", help="tracking store of --model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--size", type=int, nargs=2, default=(160, 120), metavar=("W", "H"))
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the server to answer /ping")
    args = parser.parse_args()
    width, height = args.size
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    body = json.dumps({"inputs": image.tolist()}).encode()
    with tempfile.TemporaryDirectory() as folder:
        model, store = (args.model, args.uri) if args.model else register_embedded_model(Path(folder))
        log = Path(folder) / "server.log"
        with local_server(model, store, args.start_timeout, log) as (url, process):
            server = psutil.Process(process.pid)
            # Warm-up at full concurrency: the allocator's pools and the worker's threads reach their size.
            if drive(url, body, args.clients, WARMUP_S)[1]:
                raise SystemExit(f"warm-up requests failed; server log: {log.read_text()[-2000:]}")
            rss = [server_rss(server)]
            latencies, failures = drive(url, body, args.clients, args.seconds, lambda: rss.append(server_rss(server)))
    answered = len(latencies)
    p50, p95 = (np.percentile(latencies, (50, 95)) * 1000) if latencies else (float("nan"),) * 2
    print(f"{args.clients} clients x {args.seconds:g} s, {width}x{height} images, {psutil.cpu_count()} CPUs")
    print(f"requests answered {answered}, failed {failures}")
    print(f"throughput {answered / args.seconds:.2f} images/s, latency p50 {p50:.0f} ms, p95 {p95:.0f} ms")
    print(f"server RSS start {rss[0] / MIB:.0f} MiB, end {rss[-1] / MIB:.0f} MiB ({(rss[-1] - rss[0]) / MIB:+.0f} MiB)")
    print(f"server RSS every {SAMPLE_EVERY_S:g} s (MiB): {' '.join(f'{value / MIB:.0f}' for value in rss)}")


if __name__ == "__main__":
    main()
