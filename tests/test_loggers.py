"""Loggers write inside the run directory: CSV always, TensorBoard and offline W&B on request."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from rlhf_lab.loggers import truncate_metrics
from rlhf_lab.train import run
from tests.conftest import CONF_DIR, compose_config

CONF = Path(CONF_DIR)

SHORT = ["trainer.max_steps=2", "trainer.limit_val_batches=1"]


def test_tensorboard_writes_event_files_beside_the_csv(tmp_path: Path) -> None:
    run(compose_config(["logger=tensorboard", *SHORT], run_dir=tmp_path))
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert "train/loss" in pd.read_csv(tmp_path / "metrics.csv").columns


def test_wandb_without_a_key_runs_offline_inside_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_wandb_login: None
) -> None:
    caller_cwd = tmp_path / "cwd"
    caller_cwd.mkdir()
    monkeypatch.chdir(caller_cwd)
    run_dir = tmp_path / "run"
    result = run(compose_config(["logger=wandb", "logger.wandb.project=tests", *SHORT], run_dir=run_dir))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("run-*.wandb"))
    assert not (caller_cwd / "wandb").exists()
    assert result.summary["val/loss"] > 0


def test_truncate_metrics_keeps_the_rows_a_checkpoint_saw_then_its_pending_row(tmp_path: Path) -> None:
    """Rows after the checkpoint are logged again by the resumed run; the checkpoint's own step, which
    Lightning logged only after saving it, is restored from the checkpoint; a half-written line is dropped."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss\n0,0,0.7\n0,1,0.6\n0,2,0.5\n0,3,0.4\n0,4,0.")
    pending = {"epoch": 0, "step": 2, "train/loss": 0.5, "train/lr": 0.01}
    assert truncate_metrics(metrics, rows=2, pending=pending) == 2
    frame = pd.read_csv(metrics)
    assert frame["step"].tolist() == [0, 1, 2]
    assert frame["train/lr"].isna().tolist() == [True, True, False]  # a new column: the header grows
    assert truncate_metrics(tmp_path / "absent.csv", rows=0) == 0
    assert not list(tmp_path.glob(".*tmp*"))  # rewritten through a temporary file, which is gone


def test_starting_over_moves_an_old_metrics_file_aside(tmp_path: Path) -> None:
    from rlhf_lab.loggers import archive_metrics

    metrics = tmp_path / "metrics.csv"
    for expected in ("metrics.1.csv", "metrics.2.csv"):
        metrics.write_text("epoch,step\n0,0\n")
        assert archive_metrics(metrics) == tmp_path / expected
        assert not metrics.exists()
    assert archive_metrics(metrics) is None


def test_wandb_mode_from_the_environment_wins_over_a_key(
    tmp_path: Path, no_wandb_login: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WANDB_MODE=offline with an API key set (a wrong one here): offline, no network, no AuthenticationError."""
    import wandb

    from rlhf_lab.loggers import resolve_wandb_mode, wandb_logger

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_wandb_mode("auto") == "offline"
    logger = wandb_logger(str(tmp_path), project="tests")
    logger.experiment.log({"a": 1.0})
    wandb.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("online") == "online"  # an explicit choice stays


def test_wandb_with_a_key_but_no_reachable_server_goes_offline_with_one_warning(
    no_wandb_login: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from rlhf_lab.loggers import resolve_wandb_mode

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        assert resolve_wandb_mode("auto") == "offline"
    assert time.monotonic() - started < 5
    assert caplog.text.count("is not reachable (no answer within 3 s): logging offline") == 1


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` of a server that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


@pytest.mark.slow
def test_a_wandb_server_that_accepts_and_never_answers_gives_offline_within_5_s(
    tmp_path: Path,
    no_wandb_login: None,
    silent_server: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A TCP connect succeeds there (it used to mean online, and wandb.init then waited 90 s): offline, one
    warning, the offline run started within the promise (4.7 s measured; 20 s here for a loaded machine)."""
    import time

    import wandb

    from rlhf_lab.loggers import wandb_logger

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        logger = wandb_logger(str(tmp_path), project="tests")
        logger.experiment.log({"a": 1.0})
    elapsed = time.monotonic() - started
    wandb.finish()
    assert elapsed < 20
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"W&B server {silent_server} is not reachable (no answer within 3 s): logging offline (wandb sync uploads "
        "it later)"
    ]


def test_server_answers_counts_any_http_status_as_an_answer(silent_server: str) -> None:
    """A 404 is a server that answers; a silent one and a closed port are not."""
    import http.server

    from rlhf_lab.loggers import server_answers

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert server_answers(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=3) is True
    finally:
        httpd.shutdown()
    assert server_answers(silent_server, timeout=0.5) is False
    assert server_answers("http://127.0.0.1:9", timeout=3) is False


def test_init_timeout_must_be_positive(tmp_path: Path) -> None:
    from rlhf_lab.errors import ConfigError
    from rlhf_lab.loggers import wandb_logger

    with pytest.raises(ConfigError, match=r"logger.wandb.init_timeout=0 must be a positive number"):
        wandb_logger(str(tmp_path), mode="offline", init_timeout=0)


#: Names that are credentials wherever they appear, and names of the project's kind that are not.
SECRET_LIKE = [
    "api_key",
    "API_KEY",
    "token",
    "password",
    "secret",
    "hf_token",
    "wandb_api_key",
    "access_token",
    "github_token",
    "openai_api_key",
    "db_password",
    "client_secret",
    "aws_secret_access_key",
    "aws_access_key_id",
    "private_key",
    "credentials",
    "hub-token",
]
NOT_SECRET = [
    "max_new_tokens",
    "max_length",
    "tokenizer",
    "keyword",
    "keys",
    "num_tokens",
    "pad_token",
    "eos_token",
    "token_budget",
    "passes",
    "secretary",
    "monkey",
]


@pytest.mark.parametrize("name", SECRET_LIKE)
def test_a_credential_name_is_secret(name: str) -> None:
    from rlhf_lab.loggers import is_secret

    assert is_secret(name)


@pytest.mark.parametrize("name", NOT_SECRET)
def test_a_name_that_only_contains_a_credential_word_is_kept(name: str) -> None:
    from rlhf_lab.loggers import is_secret

    assert not is_secret(name)


def _leaf_keys(node: Any, prefix: str = "") -> set[str]:
    """Every dotted key of ``node`` whose value is not a non-empty mapping."""
    keys: set[str] = set()
    for name, value in node.items():
        if isinstance(value, dict) and value:
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


@pytest.mark.parametrize("algo", sorted(p.stem for p in (CONF / "algo").glob("*.yaml")))
def test_no_key_of_the_real_config_is_dropped_and_every_secret_is(algo: str) -> None:
    """Every algo's composed config (W&B logger, LoRA, a teacher where it distils) keeps every key, and
    credential-named keys added at every level are dropped with what is under them."""
    from omegaconf import OmegaConf

    from rlhf_lab.loggers import flatten_config

    teacher = ["teacher=tiny"] if algo in ("kd", "seqkd", "gkd") else []
    cfg = compose_config([f"algo={algo}", "logger=wandb", "adapter=lora", *teacher])
    tree = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(tree, dict)
    flat = flatten_config(cfg)
    assert set(flat) == _leaf_keys(tree)
    assert {"data.max_length", "logger.wandb.init_timeout", "model.tokenizer"} <= set(flat)
    for node in (tree, tree["algo"], tree["data"], tree["logger"]["wandb"]):
        node.update({name: "s3cr3t" for name in SECRET_LIKE})
    tree["algo"]["wandb_api_key"] = {"nested": "s3cr3t"}
    assert flatten_config(tree) == flat


def test_max_new_tokens_reaches_wandb() -> None:
    """The key the old substring filter dropped (it contains ``token``)."""
    from rlhf_lab.loggers import flatten_config

    flat = flatten_config(compose_config(["algo=grpo", "logger=wandb"]))
    assert isinstance(flat["algo.max_new_tokens"], int)
