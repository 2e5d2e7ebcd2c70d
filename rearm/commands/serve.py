"""`rearm serve` (HTTP service), `rearm similar` and `rearm export`."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path

from rearm.errors import ConfigError, RunError

LOOPBACK_NAMES = ("localhost",)
# set by `rearm serve --workers N` for the worker processes, which build their own app
OPTIONS_VARIABLE = "REARM_SERVE_OPTIONS"


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a saved run over HTTP (pip install 'rearm[serve]')",
        description=(
            "Serve RUN_DIR/model over HTTP: GET /health, GET /info, GET|POST /recommend, "
            "GET /similar, POST /recommend/items, OpenAPI docs at /docs. The bundle is verified "
            "against its SHA-256 record and loaded once, read-only, without unpickling. A host "
            "other than loopback needs --api-key-file; requests then send the key as "
            "X-API-Key: KEY or Authorization: Bearer KEY."
        ),
    )
    serve.add_argument("run_dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes, each with its own copy of the model (1)"
    )
    serve.add_argument(
        "--api-key-file", help="file holding the API key (required unless --host is loopback)"
    )
    serve.add_argument(
        "--max-batch", type=int, default=1024, help="most users (items) in one POST (1024)"
    )
    serve.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask (1000)")
    serve.add_argument(
        "--index",
        choices=["exact", "faiss"],
        default="exact",
        help="exact scoring of all items, or an approximate faiss index "
        "(pip install 'rearm[faiss]')",
    )
    serve.add_argument(
        "--nprobe", type=int, default=32, help="faiss: inverted lists searched per query (32)"
    )
    serve.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS / torch threads per worker (1: concurrent requests use the cores)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(handler=_serve)

    similar = subparsers.add_parser(
        "similar",
        help="items nearest to an item in a saved run",
        description="The k items whose representations have the highest cosine with ITEM's "
        "(the item itself left out); the same function as GET /similar.",
    )
    similar.add_argument("run_dir")
    similar.add_argument("--item", required=True, help="the data's own item id")
    similar.add_argument("-k", type=int, default=20)
    similar.add_argument("--exclude", default="", help="comma-separated item ids to leave out")
    similar.add_argument("--json", action="store_true", help="print one JSON object")
    similar.set_defaults(handler=_similar)

    export = subparsers.add_parser(
        "export",
        help="top-k for every user, or the representation tables, to a file",
        description=(
            "Write the top-k items of every user (or of --users FILE) with scores, in chunks "
            "of users (bounded memory), to parquet / csv (rows user, rank, item, score) or npz "
            "(user [n], items [n, k], scores [n, k]); or with --format embeddings a folder "
            "holding users.parquet and items.parquet (id, vector). Written atomically."
        ),
    )
    export.add_argument("run_dir")
    export.add_argument("--out", required=True, help="file (folder for embeddings) to write")
    export.add_argument(
        "--format",
        choices=["parquet", "csv", "npz", "embeddings"],
        help="default: from the suffix of --out",
    )
    export.add_argument("-k", "--k", type=int, default=100, help="items per user (100)")
    export.add_argument("--users", help="text file with one user id per line (default: all)")
    export.add_argument(
        "--chunk-users", type=int, default=2048, help="users scored at a time (2048)"
    )
    export.add_argument("--quiet", action="store_true", help="no progress output")
    export.set_defaults(handler=_export)


def _serve(args: argparse.Namespace) -> int:
    from rearm.models.base import check_type
    from rearm.serve.app import MaxBatch, MaxK, require_fastapi
    from rearm.serve.service import INDEXES, Nprobe

    require_fastapi()
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(
            "serving needs fastapi and uvicorn, which are not installed: pip install 'rearm[serve]'"
        ) from None
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    check_type(args.max_batch, MaxBatch, "--max-batch")
    check_type(args.max_k, MaxK, "--max-k")
    check_type(args.nprobe, Nprobe, "--nprobe")
    if args.index not in INDEXES:  # pragma: no cover - argparse choices
        raise ConfigError(f"--index: expected one of {', '.join(INDEXES)}")
    api_key = None if args.api_key_file is None else read_api_key(args.api_key_file)
    if api_key is None and not is_loopback(args.host):
        raise ConfigError(
            f"--host {args.host} is reachable from other machines: give --api-key-file "
            "(or serve on 127.0.0.1 behind your own proxy)"
        )
    check_address(args.host, args.port)
    from rearm.commands.run import _check_state
    from rearm.training.threads import set_threads

    _check_state(args.run_dir)
    set_threads(args.threads)
    options = {
        "run_dir": str(Path(args.run_dir).resolve()),
        "api_key_file": None
        if args.api_key_file is None
        else str(Path(args.api_key_file).resolve()),
        "max_batch": args.max_batch,
        "max_k": args.max_k,
        "index": args.index,
        "nprobe": args.nprobe,
    }
    app = app_from_options(options)  # loads and verifies: errors exit 2 before listening
    service = app.state.service
    info = service.info()
    if service.fold_in_note:
        print(f"rearm: note: /recommend/items will fail: {service.fold_in_note}", file=sys.stderr)
    if not service.verified:
        print(
            f"rearm: note: {args.run_dir}: the bundle has no SHA-256 record; files not verified",
            file=sys.stderr,
        )
    print(
        f"serving {info['model']} ({info['num_users']:,} users, {info['num_items']:,} items, "
        f"{info['index']} index, bundle sha256 {info['bundle_sha256'][:12]}) on "
        f"http://{_url_host(args.host)}:{args.port} with {args.workers} worker(s)"
        + ("; API key required" if api_key else ""),
        file=sys.stderr,
        flush=True,
    )
    common = {
        "host": args.host,
        "port": args.port,
        "access_log": args.access_log,
        "log_level": "info" if args.access_log else "warning",
    }
    if args.workers == 1:
        uvicorn.run(app, **common)
    else:
        del app, service  # each worker process loads its own copy
        os.environ[OPTIONS_VARIABLE] = json.dumps(options)
        uvicorn.run(
            "rearm.commands.serve:app_from_environment",
            factory=True,
            workers=args.workers,
            **common,
        )
    return 0


def app_from_options(options: dict):
    from rearm.serve.app import create_app

    api_key = None if options["api_key_file"] is None else read_api_key(options["api_key_file"])
    return create_app(
        options["run_dir"],
        api_key=api_key,
        max_batch=options["max_batch"],
        max_k=options["max_k"],
        index=options["index"],
        nprobe=options["nprobe"],
    )


def app_from_environment():
    """The app of one `rearm serve --workers N` worker process (uvicorn factory)."""
    return app_from_options(json.loads(os.environ[OPTIONS_VARIABLE]))


def read_api_key(path: str | os.PathLike) -> str:
    """The key in a file (surrounding whitespace removed); RunError if unreadable or empty."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise RunError(f"{path}: cannot read the API key ({reason})") from None
    if not key:
        raise RunError(f"{path}: the API key file is empty")
    if any(ch.isspace() for ch in key):
        raise RunError(f"{path}: the API key must be one line without spaces")
    return key


def check_address(host: str, port: int) -> None:
    """RunError now, before the model loads, if uvicorn could not listen on host:port (port in
    use, address not on this machine, no permission)."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as error:
        reason = getattr(error, "strerror", None) or error
        raise RunError(f"--host {host} --port {port}: cannot listen there ({reason})") from None


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _similar(args: argparse.Namespace) -> int:
    from rearm.commands.run import _check_state
    from rearm.serve.service import Service

    _check_state(args.run_dir)
    service = Service(args.run_dir)
    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    exclude = [i.strip() for i in args.exclude.split(",") if i.strip()]
    result = service.similar(args.item.strip(), args.k, exclude=exclude)
    if args.json:
        print(json.dumps({"k": args.k, **result}))
    else:
        print(f"items similar to {result['item']} (cosine):")
        for rank, (item, score) in enumerate(zip(result["items"], result["scores"]), 1):
            print(f"  {rank:>3}. {item}  ({score:.4f})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from rearm.commands.run import _check_state
    from rearm.errors import UnknownUserError
    from rearm.experiments.bundle import load_bundle
    from rearm.serve.export import export_embeddings, export_top_k, read_user_ids
    from rearm.training.trainer import Progress

    users = None if args.users is None else read_user_ids(args.users)
    if args.format == "embeddings" and users is not None:
        raise ConfigError("--users: not used with --format embeddings (every row is written)")
    _check_state(args.run_dir)
    bundle = load_bundle(args.run_dir)
    progress = Progress(enabled=not args.quiet)
    if args.format == "embeddings":
        summary = export_embeddings(
            bundle, args.out, chunk_users=args.chunk_users, progress=progress
        )
    else:
        try:
            summary = export_top_k(
                bundle,
                args.out,
                k=args.k,
                fmt=args.format,
                users=users,
                chunk_users=args.chunk_users,
                progress=progress,
            )
        except UnknownUserError as error:
            raise RunError(f"{args.users}: {error}") from None
    print(json.dumps(summary))
    return 0
