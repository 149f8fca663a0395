"""The Hugging Face Hub: hf://OWNER/NAME[@REV][/FILE] checkpoints through hf_hub_download and its cache, training
runs pushed from rank 0 in the background (EMA weights, config, sample grid, model card), web files pushed for the page.

The token, the cache folder (HF_HOME), the endpoint (HF_ENDPOINT) and offline mode (HF_HUB_OFFLINE) come the usual
huggingface_hub way; nothing here stores a token.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import torch

from .checkpoint import PUSHED_CONFIG, PUSHED_WEIGHTS, CheckpointError, hub_cache_repo
from .runs import read_jsonl

HF_PREFIX = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a Hub user, organisation or repository name
HUB_PATH = re.compile(rf"^hf://(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^/]+))?(?:/(?P<file>.+))?$")
REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
PUSH_TRIES = 3  # attempts per checkpoint interval before one warning line
PUSH_BACKOFF_S = 10.0  # wait before the 2nd attempt; doubled before each further one
FINAL_WAIT_S = 600.0  # at the end of training, how long to wait for the last upload
STAGING = "hub"  # <run>/hub/: exactly what the last push uploaded (or tried to), to push by hand with `hf upload`
SAMPLE_GRID = "samples.png"
CARD = "README.md"


class HubError(CheckpointError):
    """A Hub path that cannot be resolved or a push that cannot be made; one line naming the problem and the fix."""


# ---------------------------------------------------------------------------------------------------------
# hf:// paths -> local files


@dataclass(frozen=True)
class HubPath:
    """hf://OWNER/NAME[@REV][/FILE]: revision None = main, file None = the files training.py pushes."""

    repo_id: str
    revision: str | None
    file: str | None
    text: str


def is_hub_path(text) -> bool:
    return isinstance(text, str) and text.startswith(HF_PREFIX)


def parse_hub_path(text: str) -> HubPath:
    """HubPath of hf://OWNER/NAME[@REV][/FILE]; a revision with a slash is written URL-encoded (refs%2Fpr%2F1)."""
    match = HUB_PATH.match(text)
    if match is None:
        raise HubError(f"'{text}' is not a Hub path; write hf://OWNER/NAME, hf://OWNER/NAME@REVISION or .../FILE")
    revision = unquote(match["revision"]) if match["revision"] else None
    return HubPath(match["repo"], revision, match["file"], text)


def repo_id_arg(text: str) -> str:
    """argparse type of --push_to_hub: OWNER/NAME (an hf:// prefix is accepted)."""
    repo = text.removeprefix(HF_PREFIX)
    if not REPO_ID.match(repo):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a Hub repository; write OWNER/NAME (e.g. alice/sphere-cifar10)"
        )
    return repo


def endpoint() -> str | None:
    """HF_ENDPOINT as it is now (huggingface_hub reads it once, at import); None = the library's default."""
    return os.environ.get("HF_ENDPOINT") or None


def offline() -> bool:
    """HF_HUB_OFFLINE as it is now, or as huggingface_hub read it: then only the local cache answers."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE") or constants.is_offline_mode()


def download(path: HubPath, file: str, revision: str | None) -> Path:
    """hf_hub_download of one file (cached; offline from the cache alone); HubError naming what went wrong."""
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(path.repo_id, file, revision=revision, endpoint=endpoint(), local_files_only=offline())
    except Exception as error:  # noqa: BLE001 - mapped to one line below, or re-raised
        raise download_error(error, path, file) from None
    return Path(local)


def download_error(error: Exception, path: HubPath, file: str) -> Exception:
    """The one-line HubError for a failed download (the error itself when it is none of the Hub's)."""
    from huggingface_hub import errors

    where, revision = path.text, path.revision or "main"
    if isinstance(error, errors.GatedRepoError):
        return HubError(f"{where}: {path.repo_id} is gated; accept its terms on the Hub and log in (`hf auth login`)")
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(
            f"{where}: no repository {path.repo_id} on the Hub (or it is private: log in with `hf auth login` or set "
            "HF_TOKEN); check OWNER/NAME"
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(
            f"{where}: {path.repo_id} has no revision '{revision}'; pass a branch, tag or commit that exists"
        )
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return HubError(
            f"{where}: {path.repo_id}@{revision} has no file '{file}'; pass hf://OWNER/NAME for the files training.py "
            "--push_to_hub uploads, or /FILE of a file in the repository"
        )
    if isinstance(error, errors.LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if offline() else "the Hub could not be reached"
        return HubError(f"{where}: '{file}' is not in the local Hub cache and {why}; run once online to download it")
    if isinstance(error, errors.HfHubHTTPError):
        status = error.response.status_code if error.response is not None else "?"
        return HubError(f"{where}: the Hub answered HTTP {status} for '{file}'; check the path and your token")
    if isinstance(error, OSError):  # e.g. "Consistency check failed": a download cut short
        reason = str(error).splitlines()[0][:160]
        return HubError(f"{where}: downloading '{file}' failed ({reason}); run again")
    return error


def resolve_hub_checkpoint(text: str) -> Path:
    """Local file of a Hub checkpoint: /FILE as named (a checkpoint_*.pth), else model.safetensors with its
    config.json beside it in one snapshot folder (both at the commit config.json resolved to)."""
    path = parse_hub_path(text)
    if path.file is not None:
        return download(path, path.file, path.revision)
    config = download(path, PUSHED_CONFIG, path.revision)
    return download(path, PUSHED_WEIGHTS, config.parent.name)  # snapshots/<commit>/: the same commit


def resolve_hub_file(text: str) -> Path:
    """Local file of hf://OWNER/NAME[@REV]/FILE (a web file for sampling.py --weights); FILE is required."""
    path = parse_hub_path(text)
    if path.file is None:
        raise HubError(f"'{text}' names no file; write hf://OWNER/NAME/<model>/model_<mode>.safetensors")
    return download(path, path.file, path.revision)


def local_path(text: str | Path) -> Path:
    """A file path as given, or the local copy of an hf:// file."""
    return resolve_hub_file(text) if is_hub_path(text) else Path(text)


def cached_repo_name(path: Path) -> str | None:
    """'OWNER--NAME' for a file inside the Hugging Face cache (models--OWNER--NAME/snapshots/...), else None."""
    repo = hub_cache_repo(path)
    return None if repo is None else repo.name.removeprefix("models--")


def hub_folder_name(text: str) -> str:
    """A model folder name for a Hub checkpoint: NAME, or NAME_<file stem> for /FILE."""
    path = parse_hub_path(text)
    name = path.repo_id.split("/")[1]
    return name if path.file is None else f"{name}_{Path(path.file).stem.removeprefix('checkpoint_')}"


def repo_url(repo_id: str, revision: str | None) -> str:
    base = f"{(endpoint() or DEFAULT_ENDPOINT).rstrip('/')}/{repo_id}"
    return base if revision in (None, "main") else f"{base}/tree/{revision}"


# ---------------------------------------------------------------------------------------------------------
# Pushing: the repository, one commit of files


def hub_api():
    """huggingface_hub.HfApi with the usual token (HF_TOKEN, or `hf auth login`'s) and endpoint."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint())


def ensure_repo(api, repo_id: str, private: bool, revision: str | None) -> None:
    """Create the model repository (kept as it is when it exists) and the branch `revision` when not main."""
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")


def commit_files(api, repo_id: str, files: dict[str, Path], revision: str | None, message: str) -> None:
    """One commit adding each local file at its path in the repository."""
    from huggingface_hub import CommitOperationAdd

    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(file)) for name, file in files.items()]
    api.create_commit(repo_id, operations, commit_message=message, revision=revision, repo_type="model")


TRAINING_PUSH_HELP = (
    "at every --checkpoint-frequency, rank 0 uploads the EMA weights (model.safetensors), config.json, the latest "
    "sample grid and a model card to this model repository, in the background (a failure is a warning); a resumed "
    "run keeps pushing; sample it with sampling.py --checkpoint hf://OWNER/NAME"
)


def add_hub_flags(parser: argparse.ArgumentParser, push_help: str = TRAINING_PUSH_HELP) -> None:
    """--push_to_hub (what it uploads: push_help; training.py's by default), --hub_private, --hub_revision."""
    hub = parser.add_argument_group("Hugging Face Hub", "token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT")
    hub.add_argument("--push_to_hub", type=repo_id_arg, default=None, metavar="OWNER/NAME", help=push_help)
    hub.add_argument("--hub_private", action=argparse.BooleanOptionalAction, default=False, help="create it private")
    hub.add_argument("--hub_revision", default=None, help="branch to push to (created if missing); default main")


# ---------------------------------------------------------------------------------------------------------
# Training runs: background pushes at each checkpoint interval


@dataclass
class PushJob:
    """What one push uploads, captured when the checkpoint was written (the weights are CPU copies)."""

    state: dict[str, torch.Tensor]
    step: int
    epoch: int
    params: int
    can_sample: bool
    grid: Path | None  # the latest sample grid (or reconstructions) at that moment


@dataclass
class PushSettings:
    """Where and what a run pushes."""

    repo_id: str
    private: bool
    revision: str | None
    run_dir: Path
    run_config: dict
    command: str | None  # the command line that trained it (None when training.py ran as a library)
    logger: object = field(repr=False, default=None)


class HubPusher:
    """Rank 0's uploads of a run, one at a time in a background thread: a newer checkpoint replaces one still
    waiting; each is retried PUSH_TRIES times with backoff, then one warning line; nothing raises into training."""

    def __init__(self, settings: PushSettings):
        self.settings = settings
        self.lock, self.thread = threading.Lock(), None
        self.pending: PushJob | None = None
        self.created = False  # the repository (and branch) exist
        self.pushed: int | None = None  # step of the last successful push
        self.failed: int | None = None  # step of the last push given up on

    def push(self, model: torch.nn.Module, step: int, epoch: int) -> None:
        """Queue the model's current weights (copied now) for upload; returns at once."""
        job = PushJob(
            {key: value.detach().to("cpu", copy=True).contiguous() for key, value in model.state_dict().items()},
            step,
            epoch,
            sum(param.numel() for param in model.parameters()),
            bool(getattr(model, "can_sample", True)),
            latest_grid(self.settings.run_dir / "images"),
        )
        with self.lock:
            self.pending = job
            if self.thread is None:
                self.thread = threading.Thread(target=self.work, name="hub-push", daemon=True)
                self.thread.start()

    def work(self) -> None:
        """The thread: upload the waiting job until none is left."""
        while True:
            with self.lock:
                job, self.pending = self.pending, None
                if job is None:
                    self.thread = None
                    return
            self.upload(job)

    def upload(self, job: PushJob) -> None:
        """Stage and commit one job, retried with backoff; a final failure is one warning line."""
        settings, error = self.settings, None
        for attempt in range(PUSH_TRIES):
            if attempt:
                time.sleep(PUSH_BACKOFF_S * 2 ** (attempt - 1))
            try:
                self.commit(job)
                self.pushed, self.failed = job.step, None
                settings.logger.info(f"pushed step {job.step} to {repo_url(settings.repo_id, settings.revision)}")
                return
            except Exception as caught:  # noqa: BLE001 - training must go on whatever the upload does
                error = caught
        self.failed = job.step
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        settings.logger.warning(
            f"warning: --push_to_hub {settings.repo_id}: step {job.step} not uploaded after {PUSH_TRIES} tries "
            f"({type(error).__name__}: {reason}); training goes on, the next checkpoint tries again"
        )

    def commit(self, job: PushJob) -> None:
        settings = self.settings
        files = stage_files(job, settings)
        api = hub_api()
        if not self.created:
            ensure_repo(api, settings.repo_id, settings.private, settings.revision)
            self.created = True
        commit_files(api, settings.repo_id, files, settings.revision, f"step {job.step} (epoch {job.epoch})")

    def finish(self, timeout_s: float = FINAL_WAIT_S) -> None:
        """At the end of training: wait (at most timeout_s) for the last upload and say where it went."""
        thread, settings = self.thread, self.settings
        if thread is not None:
            thread.join(timeout_s)
        staged = settings.run_dir / STAGING
        by_hand = f"upload {staged} by hand: hf upload {settings.repo_id} {staged}" + (
            f" --revision {settings.revision}" if settings.revision else ""
        )
        if self.thread is not None:
            settings.logger.warning(f"warning: the last push was still running after {timeout_s:.0f} s; {by_hand}")
        elif self.failed is not None:
            settings.logger.warning(f"warning: the last checkpoint (step {self.failed}) was not pushed; {by_hand}")
        elif self.pushed is None:
            settings.logger.info("no checkpoint interval ended in this invocation: nothing pushed to the Hub yet")
        else:
            url, uri = repo_url(settings.repo_id, settings.revision), hub_uri(settings.repo_id, settings.revision)
            settings.logger.info(f"model on the Hub: {url} (step {self.pushed}); sample it: --checkpoint {uri}")


def hub_uri(repo_id: str, revision: str | None) -> str:
    return f"{HF_PREFIX}{repo_id}" + (f"@{revision}" if revision not in (None, "main") else "")


def training_command() -> str | None:
    """The command line of this process when it is training.py run as a script (torchrun included)."""
    if Path(sys.argv[0]).name != "training.py":
        return None
    return shlex.join(["python", "training.py", *sys.argv[1:]])


def pusher_for(args: argparse.Namespace, run_dir: Path, run_config: dict, logger) -> HubPusher | None:
    """The run's HubPusher when --push_to_hub names a repository (rank 0 only), else None."""
    if not getattr(args, "push_to_hub", None):
        return None
    settings = PushSettings(
        args.push_to_hub, bool(args.hub_private), args.hub_revision, run_dir, run_config, training_command(), logger
    )
    every = f"every {args.checkpoint_frequency} epochs" if args.checkpoint_frequency > 1 else "every epoch"
    logger.info(f"pushing to {repo_url(args.push_to_hub, args.hub_revision)} {every}, in the background")
    return HubPusher(settings)


# ---------------------------------------------------------------------------------------------------------
# The files of a push: weights, config, sample grid, model card


def latest_grid(images: Path) -> Path | None:
    """The newest epoch_N_samples_*.png (most steps), else the newest epoch_N_recon.png; None before any render."""
    for pattern in ("epoch_*_samples_*step.png", "epoch_*_recon.png"):
        found = sorted(images.glob(pattern), key=grid_order)
        if found:
            return found[-1]
    return None


def grid_order(path: Path) -> tuple[int, int]:
    """(epoch, steps) of an epoch_NNNN_samples_Tstep.png name."""
    numbers = [int(number) for number in re.findall(r"\d+", path.stem)]
    return numbers[0], numbers[1] if len(numbers) > 1 else 0


def stage_files(job: PushJob, settings: PushSettings) -> dict[str, Path]:
    """Write <run>/hub/{model.safetensors, config.json, samples.png, README.md}; path in repository -> file."""
    from safetensors.torch import save_file

    folder = settings.run_dir / STAGING
    folder.mkdir(parents=True, exist_ok=True)
    files = {PUSHED_WEIGHTS: folder / PUSHED_WEIGHTS, PUSHED_CONFIG: folder / PUSHED_CONFIG}
    metadata = {"format": "pt", "weights": "ema", "step": str(job.step), "epoch": str(job.epoch)}
    save_file(job.state, str(files[PUSHED_WEIGHTS]), metadata=metadata)
    files[PUSHED_CONFIG].write_text(json.dumps(settings.run_config, indent=2, sort_keys=True) + "\n")
    if job.grid is not None:
        files[SAMPLE_GRID] = folder / SAMPLE_GRID
        shutil.copyfile(job.grid, files[SAMPLE_GRID])
    files[CARD] = folder / CARD
    files[CARD].write_text(model_card(job, settings))
    return files


def training_metrics(run_dir: Path) -> list[tuple[str, str, str]]:
    """(metric, value, where) of the run's latest loss, reconstruction PSNR and quick FIDs (metrics.jsonl)."""
    latest: dict[str, tuple[float, int]] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        for key, value in record.items():
            if (key in ("loss", "recon_psnr") or key.startswith("fid_")) and isinstance(value, (int, float)):
                latest[key] = (value, record.get("step", 0))
    return [(key, f"{value:.4g}", f"training, step {step}") for key, (value, step) in latest.items()]


def evaluation_metrics(run_dir: Path) -> list[tuple[str, str, str]]:
    """(metric, value, where) of the latest evaluate.py result per (evaluation, steps, cfg, metric) (eval.jsonl)."""
    latest: dict[tuple, dict] = {}
    for record in read_jsonl(run_dir / "eval.jsonl"):
        if isinstance(record.get("value"), (int, float)):
            latest[(record.get("evaluation"), record.get("steps"), record.get("cfg"), record.get("metric"))] = record
    rows = []
    for (evaluation, steps, cfg, metric), record in latest.items():
        guidance = "" if cfg is None else f", cfg {cfg:g}"
        rows.append((str(metric), f"{record['value']:.4g}", f"evaluate.py {evaluation}, steps {steps}{guidance}"))
    return rows


def model_card(job: PushJob, settings: PushSettings) -> str:
    """README.md of the model repository: what it is, its samples and metrics, how it was trained, how to use it."""
    config, model = settings.run_config, settings.run_config.get("model", {})
    family, uri = model.get("family", "sphere"), hub_uri(settings.repo_id, settings.revision)
    header = [
        "---",
        f"tags: [sphere-encoder, {family}, image-generation, pytorch]",
        "library_name: pytorch",
        "---",
        f"# {settings.repo_id}",
        "",
        f"A **{family}** model (`{config.get('model_type')}`, {job.params / 1e6:.2f}M parameters, {job.params} in "
        f"all) trained on **{config.get('dataset_name')}** ({model.get('image_size')} px) for **{job.step} steps** "
        f"({job.epoch} epochs). `model.safetensors` holds its EMA weights, `config.json` the run's config (model "
        "config under `model`, every training flag under `train`).",
        "",
    ]
    return "\n".join(header + grid_lines(job) + metric_lines(settings.run_dir) + usage_lines(job, settings, uri))


def grid_lines(job: PushJob) -> list[str]:
    if job.grid is None:
        return []
    return [f"![{job.grid.stem}]({SAMPLE_GRID})", "", f"`{job.grid.name}` of the run (EMA weights).", ""]


def metric_lines(run_dir: Path) -> list[str]:
    rows = training_metrics(run_dir) + evaluation_metrics(run_dir)
    if not rows:
        return []
    return ["## Metrics", "", "| metric | value | from |", "|---|---|---|"] + [
        f"| {name} | {value} | {where} |" for name, value, where in rows
    ] + [""]  # fmt: skip


def usage_lines(job: PushJob, settings: PushSettings, uri: str) -> list[str]:
    """How to sample from it with this repository."""
    sample = (
        f"python sampling.py --checkpoint {uri} --num_samples 64"
        if job.can_sample
        else f"python sampling.py --checkpoint {uri}   # reconstructs held-out images: this model cannot sample"
    )
    name = settings.repo_id.split("/")[1]
    return [
        "## Use it",
        "",
        "With the Sphere Encoder repository (files are fetched through the Hugging Face cache; HF_HUB_OFFLINE=1 "
        "works once they are there):",
        "",
        "```bash",
        sample,
        f"python evaluate.py --checkpoint {uri}",
        f"python export_weights.py --checkpoint {uri} --output_dir frontend/public/models/{name}",
        "```",
        "",
        *training_lines(settings),
    ]


def training_lines(settings: PushSettings) -> list[str]:
    """The command that trained it (when known) and the model config."""
    command = ["```bash", settings.command, "```", ""] if settings.command else []
    return [
        "## How it was trained",
        "",
        *command,
        "`python training.py --config config.json` (this repository's config.json) reproduces every flag of the run.",
        "",
        "## Model config",
        "",
        "```json",
        json.dumps(settings.run_config.get("model", {}), indent=2, sort_keys=True),
        "```",
        "",
    ]


# ---------------------------------------------------------------------------------------------------------
# Web files: batch_export.py --push_to_hub, read by the page with ?hub=OWNER/NAME


def index_files(value) -> list[str]:
    """Every "file" path (relative to index.json) that index.json's entries name, in order, once."""
    if isinstance(value, dict):
        found = [value["file"]] if isinstance(value.get("file"), str) else []
        return list(dict.fromkeys(found + [name for item in value.values() for name in index_files(item)]))
    if isinstance(value, list):
        return list(dict.fromkeys(name for item in value for name in index_files(item)))
    return []


def push_web_files(output_root: Path, repo_id: str, private: bool, revision: str | None) -> str:
    """Upload index.json and every file it names (paths kept) in one commit; returns the page's ?hub= value."""
    index = output_root / "index.json"
    names = index_files(json.loads(index.read_text()))
    missing = [name for name in names if not (output_root / name).is_file()]
    if missing:
        raise HubError(f"{index} names {missing[0]}, which is missing; run batch_export.py again before pushing")
    files = {"index.json": index, **{name: output_root / name for name in names}}
    try:
        api = hub_api()
        ensure_repo(api, repo_id, private, revision)
        commit_files(api, repo_id, files, revision, f"index.json and {len(names)} web files")
    except Exception as error:  # noqa: BLE001 - the script's one-line error
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise HubError(
            f"--push_to_hub {repo_id}: upload failed ({type(error).__name__}: {reason}); check your token "
            "(`hf auth login` or HF_TOKEN, with write access) and run again"
        ) from None
    return repo_id + (f"@{revision}" if revision not in (None, "main") else "")
