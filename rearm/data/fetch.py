"""Fetch a published data set from the Hugging Face Hub into a folder rearm reads.

`fetch_dataset("baby", "data/baby")` lists the dataset repository's files at the requested
revision, picks the files of one data set (the REARM layout: train/valid/test.npy, or the MMRec
layout: one `<name>.inter`; plus every `<name>_feat.npy`), downloads them through the Hub cache
(resumable, reused on the next fetch, readable with HF_HUB_OFFLINE=1), validates the result with
the normal readers and only then moves the folder into place with a `source.json` naming the
commit fetched and the SHA-256 of every file.

`huggingface_hub` is an optional dependency (`pip install 'rearm[hub]'`), imported here only.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rearm.data.describe import describe
from rearm.data.output import check_output_folder, output_folder
from rearm.data.readers import load_dataset
from rearm.errors import DataError
from rearm.io import file_sha256, write_json

HUB_DATASETS = {
    "baby": "MrShouxingMa/Baby",
    "sports": "MrShouxingMa/Sports",
    "clothing": "MrShouxingMa/Clothing",
}
"""Short names for the REARM authors' dataset repositories on the Hub."""

SOURCE_FILE = "source.json"
DEFAULT_REVISION = "main"
SPLIT_NAMES = {"train.npy": "train", "valid.npy": "valid", "val.npy": "valid", "test.npy": "test"}
EXTRA_SUFFIXES = ("_id_mapping.csv",)  # small id maps kept beside an MMRec data set when present

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class LayoutPlan:
    """Which repository files make the data set, and the names they get in the output folder."""

    layout: str  # "rearm" or "mmrec"
    folder: str  # repository folder holding the data set ("" for the root)
    files: dict[str, str] = field(default_factory=dict)  # output name -> repository path


def parse_source(spec: str) -> tuple[str, str | None]:
    """`baby` / `sports` / `clothing` or `hf:OWNER/REPO[@REVISION]` -> (repo id, revision)."""
    text = spec.strip()
    if text.lower() in HUB_DATASETS:
        return HUB_DATASETS[text.lower()], None
    if not text.startswith("hf:"):
        known = ", ".join(HUB_DATASETS)
        raise DataError(
            f"{spec!r}: unknown data set; give one of {known} or hf:OWNER/REPO[@REVISION]"
        )
    repo_id, _, revision = text[3:].partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise DataError(f"{spec!r}: {repo_id!r} is not a repository id OWNER/NAME")
    if "@" in text[3:] and not revision:
        raise DataError(f"{spec!r}: empty revision after '@'")
    return repo_id, revision or None


def plan_layout(paths: Iterable[str], subfolder: str | None = None) -> LayoutPlan:
    """Choose the data set among a repository's files (pure; see the module docstring).

    Every folder holding train/valid/test.npy (`val.npy` accepted for valid) is a REARM
    candidate, every folder holding exactly one `.inter` file an MMRec candidate (REARM wins
    when a folder holds both). The shallowest candidate is taken; several at the same depth need
    `subfolder`. Output names: `train.npy`, `valid.npy`, `test.npy` or the `.inter` file's
    name, every `<name>_feat.npy` of that folder and, for MMRec, its `*_id_mapping.csv`.
    """
    folders: dict[str, list[str]] = {}
    for path in paths:
        folder, _, name = path.rpartition("/")
        folders.setdefault(folder, []).append(name)
    wanted = None if subfolder is None else subfolder.strip("/")
    candidates = []
    for folder, names in sorted(folders.items()):
        if wanted is not None and folder != wanted:
            continue
        plan = _plan_folder(folder, set(names))
        if plan is not None:
            candidates.append(plan)
    if not candidates:
        where = f"folder {wanted!r}" if wanted is not None else "the repository"
        shown = sorted(p for p in paths)[:8]
        raise DataError(
            f"{where} holds no data set rearm reads (train/valid/test.npy or one <name>.inter, "
            f"with <name>_feat.npy); files: {', '.join(shown) or 'none'}"
        )
    depth = min(_depth(plan.folder) for plan in candidates)
    shallowest = [plan for plan in candidates if _depth(plan.folder) == depth]
    if len(shallowest) > 1:
        names = ", ".join(repr(plan.folder) for plan in shallowest)
        raise DataError(f"the repository holds several data sets ({names}); pass --subfolder")
    return shallowest[0]


def _plan_folder(folder: str, names: set[str]) -> LayoutPlan | None:
    def repo_path(name: str) -> str:
        return f"{folder}/{name}" if folder else name

    splits: dict[str, str] = {}
    for name in sorted(names, key=lambda n: (n == "val.npy", n)):  # valid.npy before val.npy
        if name in SPLIT_NAMES:
            splits.setdefault(SPLIT_NAMES[name], name)
    inter = sorted(name for name in names if name.endswith(".inter"))
    features = sorted(name for name in names if name.endswith("_feat.npy"))
    if len(splits) == 3:
        files = {f"{split}.npy": repo_path(name) for split, name in splits.items()}
        layout = "rearm"
    elif len(inter) == 1:
        files = {inter[0]: repo_path(inter[0])}
        files.update({n: repo_path(n) for n in sorted(names) if n.endswith(EXTRA_SUFFIXES)})
        layout = "mmrec"
    else:
        return None
    files.update({name: repo_path(name) for name in features})
    return LayoutPlan(layout=layout, folder=folder, files=files)


def _depth(folder: str) -> int:
    return 0 if not folder else folder.count("/") + 1


def fetch_dataset(
    source: str,
    out_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    offline: bool | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Download data set `source` (see `parse_source`) into `out_dir`; returns source.json's
    content plus the dataset card under "card".

    Args:
        revision: branch, tag or commit (overrides an `@REVISION` in `source`; default main).
        subfolder: the repository folder holding the data set, when it holds several.
        endpoint: Hub address (default: the client's, i.e. HF_ENDPOINT or huggingface.co).
        cache_dir: Hub cache folder (default: the client's, i.e. HF_HUB_CACHE / HF_HOME).
        offline: use only the cache (default: the client's HF_HUB_OFFLINE setting). Online, an
            unreachable Hub also falls back to the cache, as the client does for single files.
        force: replace an existing data set folder at `out_dir`.
        progress: called with one line per step (default: silent).
    """
    hub = _import_hub()
    say = progress or (lambda line: None)
    repo_id, pinned = parse_source(source)
    revision = revision or pinned or DEFAULT_REVISION
    endpoint = (endpoint or hub.constants.ENDPOINT).rstrip("/")
    cache = Path(cache_dir) if cache_dir is not None else Path(hub.constants.HF_HUB_CACHE)
    if offline is None:
        offline = _client_offline(hub)
    label = f"{repo_id}@{revision}"
    out = Path(out_dir)
    check_output_folder(out, force)

    listing, commit, network_error = None, None, None
    if not offline:
        say(f"listing {label} on {endpoint}")
        try:
            info = hub.HfApi(endpoint=endpoint).repo_info(
                repo_id, repo_type="dataset", revision=revision, files_metadata=True
            )
            commit = info.sha
            if not commit or not _COMMIT.match(commit):
                raise DataError(
                    f"{label}: the Hub at {endpoint} listed no commit hash ({commit!r})"
                )
            listing = {
                sibling.rfilename: (sibling.size, sibling.lfs.sha256 if sibling.lfs else None)
                for sibling in info.siblings or []
            }
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - classified below, re-raised if unknown
            network_error = _hub_error(hub, error, label, endpoint)
    if listing is None:
        commit, listing = _cached_listing(cache, repo_id, revision, label, network_error, offline)
        say(f"using the cached snapshot {commit} of {label} (offline)")
    plan = plan_layout(listing, subfolder)
    say(f"commit {commit}: {plan.layout} layout, {len(plan.files)} files")
    _check_space(out, [listing[path][0] for path in plan.files.values()])

    started = time.perf_counter()
    files = []
    try:
        with output_folder(out, force) as stage:
            for name, repo_path in plan.files.items():
                size, expected_sha = listing[repo_path]
                say(f"  {repo_path} ({_size_text(size)})")
                try:
                    # Online, ask for the revision by name so that the client records it in the
                    # cache (refs/<revision>), which an offline rerun needs; the snapshot folder
                    # returned names the commit actually served.
                    cached_only = _cached_only(network_error, offline)
                    local = hub.hf_hub_download(
                        repo_id,
                        repo_path,
                        repo_type="dataset",
                        revision=commit if cached_only else revision,
                        cache_dir=str(cache),
                        endpoint=endpoint,
                        local_files_only=cached_only,
                    )
                    if commit not in Path(local).parts:
                        raise DataError(
                            f"{label}: {repo_path} came from another commit than the listing's "
                            f"{commit} (the revision moved during the fetch); run it again"
                        )
                    _place(Path(local), stage / name)
                except Exception as error:  # noqa: BLE001
                    raise _download_error(hub, error, label, repo_path, out) from None
                digest = file_sha256(stage / name)
                if expected_sha is not None and digest != expected_sha:
                    raise DataError(
                        f"{label}: {repo_path}: SHA-256 {digest} does not match the Hub's {expected_sha}"
                    )
                files.append(
                    {
                        "name": name,
                        "repo_path": repo_path,
                        "bytes": (stage / name).stat().st_size,
                        "sha256": digest,
                    }
                )
            dataset = load_dataset(stage, format=plan.layout)
            card = describe(dataset)
            record = {
                "source": source,
                "repo_id": repo_id,
                "repo_type": "dataset",
                "revision": revision,
                "commit": commit,
                "endpoint": endpoint,
                "from_cache_only": _cached_only(network_error, offline),
                "layout": plan.layout,
                "subfolder": plan.folder,
                "files": files,
                "huggingface_hub": getattr(hub, "__version__", "unknown"),
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.perf_counter() - started, 3),
            }
            write_json(stage / SOURCE_FILE, record)
    except OSError as error:
        problem = "disk full" if error.errno == errno.ENOSPC else "cannot write"
        raise DataError(f"{out}: {problem} ({error.strerror or error})") from None

    card["source"] = str(out)
    return {**record, "card": card}


def _cached_only(network_error: Exception | None, offline: bool) -> bool:
    return offline or network_error is not None


# ----------------------------------------------------------------------------------------------
# Hub client adapter


def _import_hub():
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.utils
    except ImportError:
        raise DataError(
            "rearm data fetch needs huggingface_hub: pip install 'rearm[hub]'"
        ) from None
    return huggingface_hub


def _client_offline(hub) -> bool:
    is_offline = getattr(hub.constants, "is_offline_mode", None)
    return bool(is_offline()) if callable(is_offline) else bool(hub.constants.HF_HUB_OFFLINE)


def _hub_class(hub, name: str) -> type:
    for module_name in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # older clients keep their errors in utils only
            continue
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            return cls
    return type(f"_Missing{name}", (Exception,), {})  # never raised, never matched


def _is_network_error(hub, error: Exception) -> bool:
    if isinstance(error, _hub_class(hub, "OfflineModeIsEnabled") | ConnectionError | TimeoutError):
        return True
    http_error = _hub_class(hub, "HfHubHTTPError")
    if isinstance(error, http_error):
        status = getattr(getattr(error, "response", None), "status_code", None)
        return status is None or status >= 500 or status in (408, 429)
    module = type(error).__module__.split(".")[0]
    return module in {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


def _hub_error(hub, error: Exception, label: str, endpoint: str) -> Exception:
    """Raise a one-line DataError for a listing failure, or return a network error so that the
    caller falls back to the cache."""
    if isinstance(error, _hub_class(hub, "RevisionNotFoundError")):
        raise DataError(f"{label}: revision not found in the repository (at {endpoint})") from None
    if isinstance(error, _hub_class(hub, "RepositoryNotFoundError")):
        raise DataError(
            f"{label}: no such dataset repository at {endpoint} (or it is private/gated and no "
            "valid token was given)"
        ) from None
    if _is_network_error(hub, error):
        return error
    raise DataError(f"{label}: the Hub at {endpoint} answered: {_first_line(error)}") from None


def _cached_listing(
    cache: Path, repo_id: str, revision: str, label: str, error: Exception | None, offline: bool
) -> tuple[str, dict[str, tuple[int, None]]]:
    """(commit, {path: (size, None)}) of the snapshot cached for `revision` (the Hub cache layout:
    datasets--OWNER--NAME/refs/<revision> holds the commit, snapshots/<commit>/ the files)."""
    repo_folder = cache / ("datasets--" + repo_id.replace("/", "--"))
    why = (
        "offline mode (HF_HUB_OFFLINE)"
        if offline
        else f"the Hub is unreachable ({_first_line(error)})"
    )
    commit = revision if _COMMIT.match(revision) else None
    ref = repo_folder / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    snapshot = repo_folder / "snapshots" / (commit or "")
    if commit is None or not snapshot.is_dir():
        raise DataError(f"{label}: {why} and revision {revision!r} is not in the cache {cache}")
    listing = {
        path.relative_to(snapshot).as_posix(): (path.stat().st_size, None)
        for path in sorted(snapshot.rglob("*"))
        if path.is_file()  # follows the snapshot's links; a dangling one is not cached
    }
    return commit, listing


def _download_error(hub, error: Exception, label: str, repo_path: str, out: Path) -> Exception:
    if isinstance(error, DataError):
        return error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return DataError(f"{out}: disk full while fetching {repo_path} ({_first_line(error)})")
    if isinstance(error, _hub_class(hub, "LocalEntryNotFoundError")):
        return DataError(f"{label}: {repo_path} is not in the cache and the Hub is unreachable")
    if isinstance(error, _hub_class(hub, "EntryNotFoundError")):
        return DataError(f"{label}: {repo_path} is listed but the Hub cannot find it")
    if _is_network_error(hub, error) or isinstance(error, OSError):
        return DataError(f"{label}: download of {repo_path} failed: {_first_line(error)}")
    return error


def _first_line(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


# ----------------------------------------------------------------------------------------------
# Output folder


def _check_space(out: Path, sizes: list[int | None]) -> None:
    needed = sum(size or 0 for size in sizes)
    probe = out if out.exists() else out.parent
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise DataError(
            f"{out}: disk full: the data set needs {_size_text(needed)}, {_size_text(free)} free"
        )


def _place(cached: Path, target: Path) -> None:
    """Hard-link the cached blob (no second copy on disk) or copy it where links fail."""
    blob = cached.resolve()
    try:
        os.link(blob, target)
    except OSError:
        shutil.copyfile(blob, target)


def _size_text(size: int | None) -> str:
    if size is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"
