"""Load test of `rearm serve`: latency percentiles, throughput and errors under concurrency, and
the server's memory; prints one JSON object.

    python benchmarks/serve.py RUN [--requests 5000] [--levels 1,8,32] [--batch 64]
    python benchmarks/serve.py RUN --soak 180 [--soak-clients 8]

Starts `rearm serve RUN` on 127.0.0.1 on a free port in a subprocess (extra options with
--server-args, e.g. "--index faiss"), waits for /health, then for each endpoint (GET /recommend
with one random known user; POST /recommend with --batch random known users) and each level of
concurrent clients sends --requests requests (after a short warm-up) and reports p50 / p95 / p99
latency in ms, requests per second and errors (non-200 answers or failed connections). The
server's resident memory (VmRSS from /proc, so Linux only; workers included) is read at start and
at the end. --soak SECONDS instead runs a steady single-user GET load and samples the memory every
--sample-every seconds, to show that it stays flat.

Clients are threads, each with its own keep-alive connection (http.client); they run on the same
machine as the server and share its cores, so on a small machine part of every latency is the
client's own CPU time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--requests", type=int, default=5000, help="per endpoint and level")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--batch", type=int, default=64, help="users per POST /recommend")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=200, help="requests before each level")
    parser.add_argument("--endpoints", default="get,post", help="get, post or both")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of steady load")
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument("--sample-every", type=float, default=5.0, help="soak: seconds")
    parser.add_argument("--server-args", default="", help="extra `rearm serve` options")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.requests < 1:
        parser.error("--levels and --requests must be positive")

    users = known_users(Path(args.run_dir))
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "rearm.cli",
        "serve",
        args.run_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *shlex.split(args.server_args),
    ]
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks
    server = subprocess.Popen(command, stderr=log, text=True)
    try:
        started = wait_ready(server, port, log)
        record = {
            "machine": machine(),
            "server": {
                "command": " ".join(command[2:]),
                "startup_s": round(started, 2),
                "rss_start_mb": rss_mb(server.pid),
            },
            "client": "threads with keep-alive http.client connections, same machine",
            "load_average_start": os.getloadavg(),
        }
        rng = random.Random(args.seed)
        if args.soak > 0:
            record["soak"] = soak(port, users, args, rng, server.pid)
        else:
            record["results"] = []
            for endpoint in [e.strip() for e in args.endpoints.split(",") if e.strip()]:
                for clients in levels:
                    make = request_maker(endpoint, users, args.batch, args.k, rng)
                    run_load(port, make, clients, args.warmup)
                    cpu = cpu_seconds(server.pid)
                    result = run_load(port, make, clients, args.requests)
                    result.update(endpoint=make.name, clients=clients)
                    if cpu is not None:
                        used = cpu_seconds(server.pid) - cpu
                        result["server_cpu_ms_per_request"] = round(
                            1000 * used / max(result["requests"], 1), 3
                        )
                    record["results"].append(result)
                    print(json.dumps(result), file=sys.stderr, flush=True)
        record["server"]["rss_end_mb"] = rss_mb(server.pid)
        record["load_average_end"] = os.getloadavg()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def known_users(run_dir: Path) -> list[str]:
    """The bundle's external user ids (ids.json, else 0..num_users-1 from bundle.json)."""
    model = run_dir / "model"
    ids = json.loads((model / "ids.json").read_text())
    if ids and ids.get("users"):
        return [str(u) for u in ids["users"]]
    return [str(u) for u in range(json.loads((model / "bundle.json").read_text())["num_users"])]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(server: subprocess.Popen, port: int, log, timeout: float = 300.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            log.seek(0)
            sys.exit(f"serve.py: the server exited ({server.returncode}): {log.read().strip()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit(f"serve.py: the server did not answer /health within {timeout:.0f}s")


class request_maker:
    """Callable returning (method, path, body) for the next request of one endpoint."""

    def __init__(self, endpoint: str, users: list[str], batch: int, k: int, rng) -> None:
        if endpoint not in ("get", "post"):
            sys.exit(f"serve.py: unknown endpoint {endpoint!r} (get or post)")
        self.endpoint, self.users, self.batch, self.k = endpoint, users, batch, k
        self.rng, self.lock = rng, threading.Lock()
        self.name = "GET /recommend" if endpoint == "get" else f"POST /recommend ({batch} users)"

    def __call__(self) -> tuple[str, str, bytes | None]:
        with self.lock:  # random.Random is not meant to be shared between threads unlocked
            if self.endpoint == "get":
                return "GET", f"/recommend?user={self.rng.choice(self.users)}&k={self.k}", None
            chosen = self.rng.sample(self.users, min(self.batch, len(self.users)))
        body = json.dumps({"users": chosen, "k": self.k}).encode()
        return "POST", "/recommend", body


def run_load(port: int, make, clients: int, total: int, until: float | None = None) -> dict:
    """`total` requests (or as many as fit before the perf_counter time `until`) from `clients`
    threads; latency percentiles over all of them."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    remaining = [total]
    lock = threading.Lock()

    def take() -> bool:
        with lock:
            if until is not None:
                return time.perf_counter() < until
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while take():
            method, path, body = make()
            headers = {"Content-Type": "application/json"} if body else {}
            begin = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            latencies[slot].append(time.perf_counter() - begin)
            errors[slot] += not ok
        connection.close()

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begin
    times = np.concatenate([np.asarray(x) for x in latencies]) * 1000.0
    if not len(times):
        return {"requests": 0, "errors": 0}
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {
        "requests": int(len(times)),
        "errors": int(sum(errors)),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(times.max()), 2),
        "requests_per_s": round(len(times) / wall, 1),
        "seconds": round(wall, 2),
    }


def soak(port: int, users: list[str], args, rng, pid: int) -> dict:
    """Steady GET load for args.soak seconds with the server's RSS sampled along the way."""
    make = request_maker("get", users, args.batch, args.k, rng)
    run_load(port, make, args.soak_clients, args.warmup)
    samples = [(0.0, rss_mb(pid))]
    end = time.perf_counter() + args.soak
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(run_load(port, make, args.soak_clients, 0, until=end))
    )
    begin = time.perf_counter()
    worker.start()
    while worker.is_alive():
        worker.join(timeout=args.sample_every)
        samples.append((round(time.perf_counter() - begin, 1), rss_mb(pid)))
        print(f"soak: {samples[-1][0]:.0f}s rss {samples[-1][1]} MB", file=sys.stderr, flush=True)
    rss = [mb for _, mb in samples]
    return {
        **result,
        "clients": args.soak_clients,
        "endpoint": make.name,
        "rss_samples_mb": samples,
        "rss_growth_mb": round(rss[-1] - rss[0], 1),
        "rss_max_minus_min_mb": round(max(rss) - min(rss), 1),
    }


def process_tree(pid: int) -> list[int]:
    """`pid` and its child processes (uvicorn workers)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = task / "children"
        if children.is_file():
            pids.extend(int(c) for c in children.read_text().split())
    return pids


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` and its child processes, MB; None off Linux."""
    total = 0
    try:
        for one in process_tree(pid):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    except OSError:
        return None
    return round(total / 1024, 1)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by `pid` and its child processes; None off Linux.
    CPU time per request does not depend on how busy the machine is, unlike latency."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for one in process_tree(pid):
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
