"""Training: it learns a planted sparse dictionary, and a killed run resumes to the same weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.activations.synthetic import planted_mixture, sparse_mixture, write_store_from_array
from thinklens.errors import ThinklensError
from thinklens.sae.formats import load_sae, sae_metadata
from thinklens.sae.train import CHECKPOINT_FILE, LOG_FILE, TrainConfig, train


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """24,576 tokens built from 48 planted directions in 32 dimensions, 3 active per token."""
    run = tmp_path_factory.mktemp("planted")
    data = sparse_mixture(n=24_576, d_model=32, n_directions=48, active=3)
    write_store_from_array(run / "activations", data, tokens_per_sequence=64, shard_tokens=4096)
    return run


@pytest.mark.parametrize(("arch", "max_fvu"), [("topk", 0.1), ("batchtopk_tied", 0.15), ("batchtopk", 0.1), ("relu", 0.3)])
def test_training_recovers_a_planted_sparse_code(planted, tmp_path, arch, max_fvu):
    config = TrainConfig(arch=arch, expansion=4, k=3, l1_coefficient=0.3, batch_size=512, epochs=6, lr=3e-3,
                         warmup_steps=10, buffer_tokens=8192, dead_after_tokens=5000, init_tokens=4096,
                         holdout_fraction=0.1)
    result = train(config, planted / "activations", tmp_path / "sae", show_progress=False)
    assert result.final["fvu"] < max_fvu, result.final
    assert result.final["dead_fraction"] < 0.75  # 48 planted directions need 48 of the 128 features
    log = [json.loads(line) for line in (tmp_path / "sae" / LOG_FILE).read_text().splitlines()]
    assert len(log) == result.steps and log[-1]["fvu"] < log[0]["fvu"]
    sae = load_sae(tmp_path / "sae")
    assert (sae.config.d_sae, sae.config.layer) == (128, 0)
    assert not (tmp_path / "sae" / CHECKPOINT_FILE).exists()
    if arch.startswith("batchtopk"):
        assert sae.threshold > 0  # learnt, so inference does not depend on the batch


def test_too_little_data_names_the_fix(planted, tmp_path):
    with pytest.raises(ThinklensError, match="fewer than one batch"):
        train(TrainConfig(batch_size=1_000_000), planted / "activations", tmp_path / "sae", show_progress=False)


def test_a_layer_the_store_lacks_is_refused_before_anything_is_written(planted, tmp_path):
    with pytest.raises(ThinklensError, match=r"layer 3 is not in the activations in .* \(layers there: 0\)"):
        train(TrainConfig(layer=3), planted / "activations", tmp_path / "sae", show_progress=False)
    assert not (tmp_path / "sae").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_an_unavailable_device_is_refused_before_anything_is_written(planted, tmp_path):
    with pytest.raises(ThinklensError, match="device 'cuda' asked but CUDA is not available here: use --device cpu"):
        train(TrainConfig(device="cuda"), planted / "activations", tmp_path / "sae", show_progress=False)
    assert not (tmp_path / "sae").exists()


def test_bf16_autocast_learns_with_float32_weights_and_records_the_dead_window(planted, tmp_path):
    """The autocast path CUDA takes by default, run here on the CPU (dtype=bfloat16)."""
    config = TrainConfig(arch="batchtopk_tied", expansion=4, k=3, batch_size=512, epochs=3, lr=3e-3, warmup_steps=10,
                         buffer_tokens=8192, dead_after_tokens=5000, init_tokens=4096, holdout_fraction=0.1,
                         dtype="bfloat16")
    result = train(config, planted / "activations", tmp_path / "sae", show_progress=False)
    assert result.final["fvu"] < 0.3, result.final
    sae = load_sae(tmp_path / "sae")
    assert {tensor.dtype for tensor in sae.state_dict().values()} == {torch.float32}
    metadata = sae_metadata(tmp_path / "sae")
    # Trained on far more than the 5,000-token window: the record is the training rule's own figure.
    assert metadata["dead_features"] == {"fraction": result.final["dead_fraction"], "window_tokens": 5000}
    assert "device" not in metadata["training"] and metadata["training"]["dtype"] == "bfloat16"
    # The same settings on another device are the same SAE: nothing to do.
    again = train(config.model_copy(update={"device": "cpu"}), planted / "activations", tmp_path / "sae",
                  show_progress=False)
    assert again.skipped


def test_an_sae_trained_before_dtype_existed_is_still_up_to_date(planted, tmp_path):
    config = TrainConfig(arch="topk", expansion=2, k=3, batch_size=512, epochs=1, min_steps=0, buffer_tokens=8192,
                         init_tokens=2048)
    train(config, planted / "activations", tmp_path / "sae", show_progress=False)
    cfg_path = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["thinklens"]["training"]["dtype"]  # what an older thinklens recorded: no dtype (and no device)
    cfg_path.write_text(json.dumps(cfg))
    assert train(config, planted / "activations", tmp_path / "sae", show_progress=False).skipped


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(planted, tmp_path):
    """A real `thinklens train` is killed after a checkpoint; the re-run ends bit-identical to a clean run."""
    def command(run) -> list[str]:
        return [sys.executable, "-m", "thinklens.cli", "train", str(run), "--arch", "batchtopk_tied", "--k", "3",
                "--expansion", "4", "--batch-size", "256", "--epochs", "6", "--checkpoint-every", "10", "--lr", "0.003"]

    for name in ("killed", "whole"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "activations").symlink_to(planted / "activations")
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (killed / "sae" / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # let it run past the checkpoint, so the kill loses some steps
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / "sae" / CHECKPOINT_FILE).exists() and not (killed / "sae" / "cfg.json").exists()
    subprocess.run(command(killed), check=True, capture_output=True)
    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True)
    resumed, whole = load_sae(killed / "sae"), load_sae(tmp_path / "whole" / "sae")
    for (name, a), (_, b) in zip(resumed.state_dict().items(), whole.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def _recovered(sae_dir, directions) -> float:
    """Share of the planted directions with a decoder row at cosine ≥ 0.9."""
    decoder = torch.nn.functional.normalize(load_sae(sae_dir).W_dec.detach(), dim=-1)
    return (torch.from_numpy(directions) @ decoder.T).max(dim=1).values.ge(0.9).float().mean().item()


def test_the_default_recipe_recovers_a_planted_dictionary_under_a_large_shared_mean(tmp_path):
    """The failure benchmarks/recovery.py found: with a shared mean far larger than the features, an encoder
    centred only at initialisation lets b_dec's drift into every pre-activation and loses directions."""
    data, directions = planted_mixture(n=24_576, d_model=32, n_directions=48, active=3, offset_norm=40.0)
    write_store_from_array(tmp_path / "activations", data, tokens_per_sequence=64, shard_tokens=4096)
    shape = {"expansion": 4, "k": 3, "batch_size": 512, "buffer_tokens": 8192, "init_tokens": 4096}
    train(TrainConfig(**shape), tmp_path / "activations", tmp_path / "centred", show_progress=False)
    train(TrainConfig(**shape, centred_encoder=False), tmp_path / "activations", tmp_path / "uncentred",
          show_progress=False)
    centred, uncentred = _recovered(tmp_path / "centred", directions), _recovered(tmp_path / "uncentred", directions)
    assert centred >= 0.9, (centred, uncentred)
    assert centred > uncentred


class _Killed(BaseException):
    """Stands for a kill: raised at a chosen point, it unwinds like SIGINT and skips every `except Exception`."""


@pytest.mark.parametrize("window", ["just after a checkpoint", "between checkpoints", "before the last step",
                                    "between saving the SAE and removing the checkpoint"])
def test_a_kill_at_each_window_resumes_to_the_uninterrupted_weights_and_log(planted, tmp_path, monkeypatch, window):
    import thinklens.sae.train as training

    config = TrainConfig(arch="batchtopk_tied", expansion=4, k=3, batch_size=256, epochs=2, min_steps=30, lr=3e-3,
                         checkpoint_every=10, buffer_tokens=8192, init_tokens=2048)
    whole = train(config, planted / "activations", tmp_path / "whole", show_progress=False)
    kill_at = {"just after a checkpoint": 11, "between checkpoints": 15, "before the last step": whole.steps}.get(window)
    real_step, real_save = training._Trainer.train_step, training.save_sae

    def step_then_maybe_die(self, batch):
        stats = real_step(self, batch)
        if self.step == kill_at:
            raise _Killed  # after the step, before its log line: the window a kill leaves unlogged
        return stats

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(training._Trainer, "train_step", step_then_maybe_die)
    if kill_at is None:
        monkeypatch.setattr(training, "save_sae", save_then_die)
    with pytest.raises(_Killed):
        train(config, planted / "activations", tmp_path / "killed", show_progress=False)
    monkeypatch.undo()
    resumed = train(config, planted / "activations", tmp_path / "killed", show_progress=False)
    assert resumed.steps == whole.steps
    a, b = load_sae(tmp_path / "killed"), load_sae(tmp_path / "whole")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    logged = [json.loads(line) for line in (tmp_path / "killed" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, whole.steps + 1))  # each step once, none missing
    assert (tmp_path / "killed" / LOG_FILE).read_text() == (tmp_path / "whole" / LOG_FILE).read_text()
    assert not (tmp_path / "killed" / CHECKPOINT_FILE).exists()
