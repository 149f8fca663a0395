"""The Hugging Face Hub without the network: a training run pushes (to a recording stand-in for HfApi's upload
calls) and a resumed run keeps pushing; hf:// checkpoints download from a local server that answers like the Hub's
file endpoint (HF_ENDPOINT=http://127.0.0.1:PORT), with 404s, a revision, a truncated download, a bad file and the
offline cache; batch_export.py pushes the web files."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub.constants
import pytest
import torch

import batch_export
import evaluate
import sampling
import training
from engine import hub
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_from_checkpoint, load_weights
from engine.cli import resolve_checkpoint
from engine.family_ldm import load_autoencoder
from engine.flags import ConfigError

COMMITS = {"main": "b" * 40, "v1": "a" * 40}  # the stand-in Hub's commit of each revision


class FakeApi:
    """Stand-in for HfApi's upload calls: records repositories, branches and each commit's files (bytes)."""

    def __init__(self, fail: bool = False):
        self.fail, self.repos, self.branches, self.commits = fail, [], [], []

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        self.repos.append((repo_id, private))

    def create_branch(self, repo_id, branch, exist_ok=False, repo_type=None):
        self.branches.append((repo_id, branch))

    def create_commit(self, repo_id, operations, commit_message, revision=None, repo_type=None):
        if self.fail:
            raise ConnectionError("Hub unreachable\nsecond line")
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append({"repo": repo_id, "revision": revision, "message": commit_message, "files": files})


class FakeHub(ThreadingHTTPServer):
    """Answers HEAD/GET /{repo}/resolve/{revision}/{file} like the Hub: X-Repo-Commit, ETag, Content-Length; 404s
    with the Hub's X-Error-Code. files[(repo, revision)] = {path: bytes}; short: (repo, path)s whose GET is cut."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files: dict[tuple[str, str], dict[str, bytes]] = {}
        self.short: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class HubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_HEAD(self):
        self.answer(body=False)

    def do_GET(self):
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        server: FakeHub = self.server
        server.requests.append((self.command, self.path))
        repo_path, _, rest = self.path.partition("/resolve/")
        repo, (revision, _, name) = repo_path.strip("/"), unquote(rest).partition("/")
        revision = {commit: rev for rev, commit in COMMITS.items()}.get(revision, revision)  # a commit hash
        revisions = {rev for known, rev in server.files if known == repo}
        if not revisions:
            return self.error(401, "RepoNotFound")  # the Hub answers 401 for a missing (or private) repository
        if revision not in revisions:
            return self.error(404, "RevisionNotFound")
        data = server.files[(repo, revision)].get(name)
        if data is None:
            return self.error(404, "EntryNotFound", COMMITS[revision])
        sent = data[: len(data) // 2] if body and (repo, name) in server.short else data
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMITS[revision])
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(sent)))
        self.end_headers()
        if body:
            self.wfile.write(sent)

    def error(self, status: int, code: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()


def tiny_flags(results: Path, *extra: str) -> list[str]:
    """A few steps of the tiny sphere model on the embedded demo data, a checkpoint and a render every epoch."""
    return [
        *("--preset", "paper", "--dataset", "demo", "--image_size", "16", "--model_type", "vit_tiny"),
        *("--recon_perc_weight", "0", "--con_perc_weight", "0", "--convnext_weight", "0"),
        *("--batch_size", "8", "--epochs", "2", "--steps", "2", "--num_workers", "0", "--eval_samples", "2"),
        *("--eval-frequency", "1", "--checkpoint-frequency", "1", "--device", "cpu", "--results_dir", str(results)),
        "--no-curves",  # test_plot.py draws the curves picture; matplotlib costs more than these runs
        *extra,
    ]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A run that pushes at step 2 and stops, then resumed without typing --push_to_hub: (run folder, api)."""
    api, results = FakeApi(), tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub, "hub_api", lambda: api)
        first = tiny_flags(results, "--push_to_hub", "me/tiny", "--stop_after_steps", "2")
        run_dir = training.main(training.parse_args(first))
        eval_record = {"evaluation": "generation", "steps": 1, "cfg": None, "metric": "fid", "value": 123.4}
        (run_dir / "eval.jsonl").write_text(json.dumps(eval_record) + "\n")  # as evaluate.py appends it
        assert training.main(training.parse_args(tiny_flags(results))) == run_dir  # resumed
    return run_dir, api


@pytest.fixture
def fake_hub(pushed, tmp_path, monkeypatch):
    """The stand-in Hub serving the pushes (main: step 4, v1: step 2, plus the run's .pth), HF_HOME in tmp_path."""
    run_dir, api = pushed
    server = FakeHub()
    last = dict(api.commits[-1]["files"])
    last["checkpoints/checkpoint_latest.pth"] = (run_dir / "checkpoints" / "checkpoint_latest.pth").read_bytes()
    server.files = {("me/tiny", "main"): last, ("me/tiny", "v1"): api.commits[0]["files"]}
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it for every other test
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    yield server
    server.shutdown()
    server.server_close()


def one_line_error(call, error=CheckpointError) -> str:
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_hub_paths_parse_and_bad_ones_are_refused():
    path = hub.parse_hub_path("hf://me/tiny@refs%2Fpr%2F1/checkpoints/checkpoint_latest.pth")
    assert (path.repo_id, path.revision, path.file) == ("me/tiny", "refs/pr/1", "checkpoints/checkpoint_latest.pth")
    assert hub.parse_hub_path("hf://me/tiny").revision is None and hub.parse_hub_path("hf://me/tiny").file is None
    assert "not a Hub path" in one_line_error(lambda: hub.parse_hub_path("hf://just-a-name"))
    with pytest.raises(SystemExit):
        training.parse_args(["--push_to_hub", "no-owner"])
    assert hub.hub_folder_name("hf://me/tiny/checkpoints/checkpoint_epoch_2.pth") == "tiny_epoch_2"


def test_training_pushes_in_the_background_and_a_resumed_run_keeps_pushing(pushed):
    run_dir, api = pushed
    assert api.repos == [("me/tiny", False), ("me/tiny", False)]  # once per invocation, public by default
    assert [commit["message"] for commit in api.commits] == ["step 2 (epoch 1)", "step 4 (epoch 2)"]
    files = api.commits[-1]["files"]
    assert set(files) == {"model.safetensors", "config.json", "samples.png", "README.md"}
    assert json.loads(files["config.json"]) == json.loads((run_dir / "config.json").read_text())
    card = files["README.md"].decode()
    model = load_model_from_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")[0]
    params = sum(p.numel() for p in model.parameters())
    for text in (
        "A **sphere** model (`vit_tiny`",
        f"{params} in all",
        "**demo**",
        "**4 steps**",
        "![epoch_0002_samples",
    ):
        assert text in card, text
    for text in ("| recon_psnr |", "| fid | 123.4 | evaluate.py generation, steps 1 |", '"latent_dim"'):
        assert text in card, text
    assert "python sampling.py --checkpoint hf://me/tiny --num_samples 64" in card
    assert "python training.py --config config.json" in card  # run as a library: no command line to show
    log = (run_dir / "log.txt").read_text()
    assert log.count("pushed step") == 2 and "model on the Hub: " in log and "warning" not in log


def test_hf_checkpoint_loads_samples_and_feeds_a_later_stage(pushed, fake_hub, tmp_path):
    run_dir, _ = pushed
    ema = load_checkpoint(run_dir / "checkpoints" / "checkpoint_latest.pth")["ema"]
    model, config = load_model_from_checkpoint(resolve_checkpoint("hf://me/tiny"))
    assert evaluate.run_dir_of(resolve_checkpoint("hf://me/tiny"), tmp_path) == tmp_path / "hub" / "me--tiny"
    assert config == json.loads((run_dir / "config.json").read_text())
    assert all(torch.equal(value, ema[key]) for key, value in model.state_dict().items())
    assert load_checkpoint(resolve_checkpoint("hf://me/tiny@v1"))["step"] == 2  # a revision
    full = load_checkpoint(resolve_checkpoint("hf://me/tiny/checkpoints/checkpoint_latest.pth"))
    assert full["step"] == 4 and full["optimizer"]  # /FILE: a training checkpoint as it was written
    paths = sampling.main(sampling.parse_args(["--checkpoint", "hf://me/tiny", "--num_samples", "2", "--steps", "1",
                                               "--device", "cpu", "--dest_folder", str(tmp_path / "out")]))  # fmt: skip
    assert paths and paths[0].relative_to(tmp_path / "out" / "me--tiny" / "model")
    message = one_line_error(lambda: load_autoencoder("hf://me/tiny"), ConfigError)  # --autoencoder takes hf:// too
    assert "holds a sphere model, not an ldm_ae_* autoencoder" in message
    state, _, saved = load_weights(resolve_checkpoint("hf://me/tiny"))  # --init_from hf://: the pushed EMA weights
    assert saved == json.loads((run_dir / "config.json").read_text())["model"]
    assert all(torch.equal(value, ema[key]) for key, value in state.items())
    flags = tiny_flags(tmp_path / "tuned", "--init_from", "hf://me/tiny", "--epochs", "1", "--steps", "1")
    tuned = training.main(training.parse_args(flags))
    assert "models--me--tiny" in json.loads((tuned / "config.json").read_text())["train"]["init_from"]


def test_hub_errors_are_one_line(fake_hub):
    fake_hub.files[("me/broken", "main")] = {"config.json": b"{}", "model.safetensors": b"\x10\x00\x00\x00trunc"}
    fake_hub.files[("me/cut", "main")] = dict(fake_hub.files[("me/tiny", "main")])
    fake_hub.short.add(("me/cut", "model.safetensors"))  # its GET sends half the bytes HEAD announced
    cases = {
        "hf://nobody/none": "no repository nobody/none on the Hub (or it is private",
        "hf://me/tiny@v9": "me/tiny has no revision 'v9'",
        "hf://me/tiny/missing.pth": "me/tiny@main has no file 'missing.pth'",
        "hf://me/cut": "downloading 'model.safetensors' failed (Consistency check failed",
    }
    for text, expected in cases.items():
        assert expected in one_line_error(lambda text=text: resolve_checkpoint(text)), text
    message = one_line_error(lambda: load_checkpoint(resolve_checkpoint("hf://me/broken")))
    assert "is unreadable or truncated" in message and "delete its download from the Hugging Face cache" in message


def test_offline_with_a_warm_cache_and_a_cold_one(fake_hub, monkeypatch):
    resolve_checkpoint("hf://me/tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(fake_hub.requests)
    assert load_checkpoint(resolve_checkpoint("hf://me/tiny"))["step"] == 4
    assert len(fake_hub.requests) == before  # the cache alone answered
    message = one_line_error(lambda: resolve_checkpoint("hf://me/tiny@v1"))
    assert "is not in the local Hub cache and HF_HUB_OFFLINE is set; run once online" in message


def test_a_failing_upload_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(hub, "hub_api", lambda: FakeApi(fail=True))
    monkeypatch.setattr(hub, "PUSH_BACKOFF_S", 0.0)
    logger = __import__("logging").getLogger("test_hub")
    settings = hub.PushSettings("me/tiny", True, "dev", tmp_path, {"model": {"family": "sphere"}}, "python x", logger)
    pusher = hub.HubPusher(settings)
    with caplog.at_level("INFO", logger="test_hub"):
        pusher.push(torch.nn.Linear(2, 2), 7, 1)
        pusher.finish(timeout_s=30)
    warnings = [record.getMessage() for record in caplog.records if "not uploaded" in record.getMessage()]
    assert len(warnings) == 1 and "step 7 not uploaded after 3 tries (ConnectionError: Hub unreachable)" in warnings[0]
    last = caplog.records[-1].getMessage()
    assert "the last checkpoint (step 7) was not pushed" in last and "hf upload me/tiny" in last
    assert "--revision dev" in last
    assert (tmp_path / "hub" / "model.safetensors").is_file()  # staged: what to upload by hand
    assert "```bash\npython x\n```" in (tmp_path / "hub" / "README.md").read_text()  # the command that trained it


def test_batch_export_pushes_the_web_files(pushed, tmp_path, monkeypatch, capsys):
    run_dir, _ = pushed
    api = FakeApi()
    monkeypatch.setattr(hub, "hub_api", lambda: api)
    out = tmp_path / "models"
    flags = [str(run_dir), "--output_root", str(out), "--mode", "q8", "--no-onnx", "--push_to_hub", "me/web"]
    batch_export.main(batch_export.parse_args([*flags, "--hub_revision", "site"]))
    assert api.branches == [("me/web", "site")]
    files = api.commits[0]["files"]
    assert set(files) == {"index.json", f"{run_dir.name}/model_q8.safetensors"}
    assert files["index.json"] == (out / "index.json").read_bytes()
    assert "?hub=me/web@site" in capsys.readouterr().out
