"""One run on two processes (DistributedDataParallel over gloo on the CPU), for real.

The processes talk over loopback only: every distributed process runs in a private network
namespace made here (`unshare -rn`, then `lo` up). Skipped with the reason where that is not
permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--defense", "plain", "--device", "cpu", "--train-limit", "80", "--test-limit", "20", "--eval-limit", "20",
        "--batch-size", "20", "--epochs", "1", "--log-every", "1"]


def _in_private_network(argv: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs `unshare` and `ip` (util-linux, iproute2) for a private network namespace")
    probe = subprocess.run(["unshare", "-rn", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace here (unshare -rn: {probe.stderr.strip()[:120]})")
    return subprocess.run(["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _events(root: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (root / run_id / "events.jsonl").read_text().splitlines()]


def test_advtui_run_nproc_2_trains_one_run_with_one_events_stream(runs_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = _in_private_network([sys.executable, "-m", "advtui", "run", *TINY, "--nproc", "2", "--name", "ddp"], env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("finished ") == 1  # rank 0 reports; rank 1 leaves quietly
    from advtui.store.registry import Registry

    (run,) = Registry(runs_root).runs()
    assert run["status"] == "finished" and run["config"]["nproc"] == 2
    assert (runs_root / run["id"] / "checkpoints" / "final.pt").exists()
    events = _events(runs_root, run["id"])
    kinds = [e["kind"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("end") == 1 and kinds.count("epoch") == 1
    steps = [e for e in events if e["kind"] == "step"]
    assert [s["batch"] for s in steps] == [1, 2, 3, 4]  # global batches of 20: each rank took 10
    assert all(s["images_per_s"] > 0 for s in steps)


def test_batch_size_must_split_evenly_across_processes(runs_root):
    done = subprocess.run([sys.executable, "-m", "advtui", "run", *TINY[:-6], "--batch-size", "15", "--epochs", "1",
                           "--nproc", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip() == "error: batch-size 15 must be a multiple of --nproc 2: each process trains an equal share of every batch"


# -- two ranks take the step one process takes ----------------------------------------------------
STEPS = 6


def _trainer(defense: str, root: Path, ranks, events):
    """A Trainer on 120 MNIST images, batch 20, dropout off (each rank would draw its own
    dropout masks, which no single process can reproduce: the comparison is of the rest)."""
    import torch

    from advtui.core.config import build_config
    from advtui.engine.distributed import Ranks
    from advtui.engine.train import Trainer, load_data

    config = build_config(defense, device="cpu", train_limit=120, test_limit=20, eval_limit=20, batch_size=20,
                          epochs=1, log_every=1, compare_every=1, inner_steps=2, eps=0.1,
                          data_root=os.environ["ADVTUI_DATA"], nproc=(ranks or Ranks()).world)
    data = load_data(config)
    trainer = Trainer(config, root, torch.device("cpu"), data.train, data.monitor, events, ranks=ranks,
                      monitor_split=data.monitor_split)
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return trainer


class _Collect:
    def __init__(self):
        self.events = []

    def emit(self, kind, **fields):
        self.events.append({"kind": kind, **fields})


def _first_steps(trainer) -> list[float]:
    from advtui.engine.train import StopRequested

    events = trainer.events

    def stop_after(progress):
        if progress.batch >= STEPS:
            trainer.stop_signal = 15

    trainer.on_progress = stop_after
    try:
        trainer.fit()
    except StopRequested:
        pass
    return [e["loss"] for e in getattr(events, "events", []) if e["kind"] == "step"]


def _rank_main(out: Path) -> None:
    """Under torchrun: each rank trains STEPS batches; rank 0 writes its step losses, and every
    rank its final parameters' checksums (the ranks must stay identical)."""
    import torch

    from advtui.engine.distributed import NullEvents, Ranks

    ranks = Ranks.from_env()
    ranks.init(torch.device("cpu"))
    result = {}
    for defense in ("plain", "rnn-adv"):
        events = _Collect() if ranks.main else NullEvents()
        trainer = _trainer(defense, out / defense, ranks, events)
        losses = _first_steps(trainer)
        sums = {"model": float(sum(p.double().sum() for p in trainer.model.parameters()))}
        if trainer.maximizer is not None:
            sums["phi"] = float(sum(p.double().sum() for p in trainer.maximizer.net.parameters()))
        result[defense] = {"losses": losses, "sums": ranks.gather(sums)}
    if ranks.main:
        (out / "ranks.json").write_text(json.dumps(result))
    ranks.close()


def test_two_ranks_take_the_step_one_process_takes_on_the_whole_batch(tmp_path, mnist_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADVTUI_DATA": str(mnist_root), "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = _in_private_network([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                str(Path(__file__).resolve()), str(tmp_path)], env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = json.loads((tmp_path / "ranks.json").read_text())

    os.environ.setdefault("ADVTUI_DATA", str(mnist_root))
    single = _first_steps(_trainer("plain", tmp_path / "single", None, _Collect()))
    two = ranks["plain"]["losses"]
    assert len(single) == len(two) == STEPS
    # The same steps, up to float rounding of the two half-batch means (not the same numbers
    # by chance: the losses move step after step).
    assert len({round(v, 3) for v in single}) > 2
    assert two == pytest.approx(single, rel=1e-5, abs=1e-6)
    # the ranks end with identical classifiers and learned optimizers (phi's gradients averaged)
    for defense in ("plain", "rnn-adv"):
        first, second = ranks[defense]["sums"]
        assert first == pytest.approx(second, rel=1e-9, abs=1e-9), defense
    assert "phi" in ranks["rnn-adv"]["sums"][0]


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
