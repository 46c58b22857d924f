"""Queue operations on the registry: what queue train/eval, cancel, kill and resume record."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from advtui.core.config import build_config
from advtui.core.errors import ConfigError, RunNotFoundError
from advtui.jobs.queue import (
    JobNotFoundError, cancel_job, kill, list_jobs, parse_seeds, queue_eval, queue_train, resolve_job, resume,
    resume_point, seed_configs,
)
from advtui.jobs.scheduler import Scheduler
from advtui.store.registry import JOBS, Registry


def tiny(**overrides):
    return build_config("plain", device="cpu", epochs=1, train_limit=20, test_limit=10, **overrides)


def test_queue_train_creates_a_queued_run_and_its_job(tmp_path):
    reg = Registry(tmp_path)
    queued = queue_train(reg, tiny(name="first"), priority=3, auto_eval="natural,pgd-10",
                         eval_options={"limit": 50, "eps": None})
    run = reg.get_run(queued.run["id"])
    assert run["status"] == "queued" and run["name"] == "first" and run["defense"] == "plain"
    assert run["epoch"] == 0 and run["epochs"] == 1 and run["checkpoints"] == {} and run["metrics"] == {}
    assert run["config"]["train_limit"] == 20 and (run["dataset"], run["model"]) == ("mnist", "smallcnn")
    train, evaluation = list_jobs(reg)
    assert train["id"].startswith("j") and len(train["id"]) == 7
    assert (train["kind"], train["run_id"], train["status"], train["priority"], train["needs"]) == \
        ("train", run["id"], "queued", 3, "cpu")
    assert evaluation["kind"] == "eval" and evaluation["depends_on"] == [train["id"]]
    assert evaluation["attacks"] == ["natural", "pgd-10"] and evaluation["eval_options"] == {"limit": 50}
    assert resolve_job(reg, train["id"]) == train
    with pytest.raises(JobNotFoundError, match="matches several jobs"):
        resolve_job(reg, "j")
    with pytest.raises(JobNotFoundError):
        resolve_job(reg, "jzzzzzz")


def test_seeds_make_one_named_run_per_seed_in_a_group():
    configs = seed_configs(tiny(), parse_seeds("0-2,4,2"))
    assert [c.seed for c in configs] == [0, 1, 2, 4]
    assert {c.group for c in configs} == {"plain-mnist"}
    assert [c.name for c in configs] == ["plain-mnist-s0", "plain-mnist-s1", "plain-mnist-s2", "plain-mnist-s4"]
    named = seed_configs(tiny(name="exp"), [7])
    assert named[0].group == "exp" and named[0].name == "exp-s7"
    for bad in ("", "a", "1-x"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_bad_attack_spec_and_names_are_refused_before_anything_is_stored(tmp_path):
    reg = Registry(tmp_path)
    from advtui.core.errors import AdvtuiError

    with pytest.raises(AdvtuiError):
        queue_train(reg, tiny(), auto_eval="natural,zap-3")
    with pytest.raises(ConfigError, match="invalid run name"):
        queue_train(reg, tiny(name="../../etc"))
    assert reg.runs() == [] and list_jobs(reg) == []


def test_queue_eval_waits_for_training_or_needs_a_final_checkpoint(tmp_path):
    reg = Registry(tmp_path)
    queued = queue_train(reg, tiny(name="training"))
    waiting = queue_eval(reg, "training", "natural", options={"limit": 20, "batch_size": None})
    assert waiting["depends_on"] == [queued.job["id"]] and waiting["eval_options"] == {"limit": 20}
    killed = reg.create_run({"name": "stopped", "status": "killed", "checkpoints": {"last": "checkpoints/last.pt"}})
    with pytest.raises(ConfigError, match="no final checkpoint"):
        queue_eval(reg, killed["id"], "natural")
    done = reg.create_run({"name": "done", "status": "finished", "config": {"device": "cuda:0"},
                           "checkpoints": {"final": "checkpoints/final.pt"}})
    job = queue_eval(reg, "done", None)
    assert job["depends_on"] == [] and job["attacks"] is None and (job["needs"], job["gpu_index"]) == ("gpu", 0)
    assert Scheduler(reg).command(job)[3:] == ["eval", done["id"], "--runs-dir", str(tmp_path)]
    job = queue_eval(reg, "done", "natural,pgd-10", options={"limit": 5, "eps": 0.1})
    assert Scheduler(reg).command(job)[3:] == ["eval", done["id"], "--attacks", "natural,pgd-10", "--runs-dir",
                                               str(tmp_path), "--limit", "5", "--eps", "0.1"]
    with pytest.raises(RunNotFoundError):
        queue_eval(reg, "nothing", "natural")


def test_cancel_a_queued_training_cancels_its_evals_and_resume_requeues_both(tmp_path):
    reg = Registry(tmp_path)
    queued = queue_train(reg, tiny(), auto_eval="natural")
    (evaluation,) = queued.evals
    cancel_job(reg, queued.job["id"])
    assert resolve_job(reg, queued.job["id"])["status"] == "cancelled"
    run = reg.get_run(queued.run["id"])
    assert run["status"] == "killed" and "before it started" in run["error"]
    blocked = resolve_job(reg, evaluation["id"])
    assert blocked["status"] == "cancelled" and blocked["blocked_by"] == queued.job["id"]
    assert "was cancelled" in blocked["error"]
    with pytest.raises(ConfigError, match="already cancelled"):
        cancel_job(reg, queued.job["id"])

    again = resume(reg, queued.run["id"])
    assert again.run["status"] == "queued" and again.run["error"] is None
    assert again.job["kind"] == "train" and again.job["status"] == "queued" and again.job["resumed"]
    assert [e["id"] for e in again.evals] == [evaluation["id"]]
    requeued = resolve_job(reg, evaluation["id"])
    assert requeued["status"] == "queued" and requeued["depends_on"] == [again.job["id"]]
    with pytest.raises(ConfigError, match="already has queued job"):
        resume(reg, queued.run["id"])


def test_resume_refuses_what_cannot_be_resumed(tmp_path):
    reg = Registry(tmp_path)
    me = psutil.Process()
    alive = reg.create_run({"name": "alive", "status": "running", "pid": me.pid, "pid_start_time": me.create_time()})
    with pytest.raises(ConfigError, match="is running"):
        resume(reg, alive["id"])
    finished = reg.create_run({"name": "fin", "status": "finished", "epoch": 2,
                               "config": {**tiny(name="fin").to_dict(), "epochs": 2}})
    lost = reg.create_run({"name": "lost", "status": "failed", "epoch": 1})
    with pytest.raises(ConfigError, match="has no recorded config to start from"):
        resume(reg, lost["id"])
    with pytest.raises(ConfigError, match="already finished"):
        resume(reg, finished["id"])
    with pytest.raises(ConfigError, match="must exceed"):
        resume(reg, finished["id"], epochs=2)
    extended = resume(reg, finished["id"], epochs=4)
    assert extended.run["epochs"] == 4 and extended.run["config"]["epochs"] == 4
    # A record whose config cannot build a run (missing, or edited into another type) is refused
    # before it is queued again, and left as it was.
    damaged = reg.create_run({"name": "damaged", "status": "killed", "epoch": 1, "config": {"epochs": 2, "eps": "big"}})
    with pytest.raises(ConfigError, match="recorded config"):
        resume(reg, damaged["id"], epochs=3)
    assert reg.get_run(damaged["id"])["status"] == "killed"


def test_kill_a_queued_job_cancels_it_and_an_idle_run_is_an_error(tmp_path):
    reg = Registry(tmp_path)
    queued = queue_train(reg, tiny(name="waiting"))
    report = kill(reg, "waiting")
    assert report.outcome == "cancelled" and resolve_job(reg, queued.job["id"])["status"] == "cancelled"
    with pytest.raises(ConfigError, match="is not running"):
        kill(reg, "waiting")
    with pytest.raises(ConfigError, match="is not running"):
        kill(reg, queued.job["id"])
    with pytest.raises(RunNotFoundError, match="no run or job"):
        kill(reg, "nothing-here")


def test_kill_a_foreground_run_without_a_job(tmp_path):
    # a run started with `advtui run` (no job, not a group leader) is signalled alone
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        reg = Registry(tmp_path)
        run = reg.create_run({"name": "fg", "status": "running", "pid": child.pid,
                              "pid_start_time": psutil.Process(child.pid).create_time()})
        report = kill(reg, "fg", grace_s=10)
        assert report.outcome == "terminated" and report.job_id is None
        assert child.wait(timeout=10) == -15
        # the process did not record its end (it is not a run), so kill records it
        assert reg.get_run(run["id"])["status"] == "killed"
    finally:
        child.kill()
        child.wait()
    assert list_jobs(reg) == [] and reg.all(JOBS) == []


def test_kill_a_running_job_records_that_the_user_stopped_it(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        reg = Registry(tmp_path)
        queued = queue_train(reg, tiny(name="busy"))
        reg.update(JOBS, {"id": queued.job["id"]}, {"status": "running", "pid": child.pid,
                                                   "pid_start_time": psutil.Process(child.pid).create_time()})
        report = kill(reg, queued.job["id"], grace_s=10)
        assert report.outcome == "terminated" and child.wait(timeout=10) == -15
        job = resolve_job(reg, queued.job["id"])
        assert job["status"] == "cancelled" and job["stopped_by"] == "user"
        assert job["error"] == "killed by user: stopped by SIGTERM"  # what the dashboard shows
    finally:
        child.kill()
        child.wait()


def test_a_run_started_from_another_waits_for_its_training(tmp_path):
    reg = Registry(tmp_path)
    source = queue_train(reg, tiny(name="pretrain"))
    follow = queue_train(reg, tiny(name="finetune", init_from="pretrain"))
    assert follow.job["depends_on"] == [source.job["id"]]
    cancel_job(reg, source.job["id"])
    stopped = resolve_job(reg, follow.job["id"])
    assert stopped["status"] == "cancelled" and stopped["blocked_by"] == source.job["id"]
    run = reg.get_run(follow.run["id"])  # not left queued forever
    assert run["status"] == "failed" and "of run " + source.run["id"] in run["error"]
    with pytest.raises(ConfigError, match="has no final checkpoint and no training queued"):
        queue_train(reg, tiny(init_from="pretrain"))
    again = resume(reg, "pretrain")
    assert resume(reg, "finetune").job["depends_on"] == [again.job["id"]]


def advtui_cli(root, *args):
    return subprocess.run([sys.executable, "-m", "advtui", *args, "--runs-dir", str(root)],
                          capture_output=True, text=True, timeout=120)


def test_queue_commands(tmp_path):
    queued = advtui_cli(tmp_path, "queue", "train", "--defense", "plain", "--device", "cpu", "--name", "cli",
                        "--priority", "5")
    assert queued.returncode == 0 and queued.stdout.startswith("queued run "), queued.stderr
    evaluation = advtui_cli(tmp_path, "queue", "eval", "cli", "--attacks", "natural", "--limit", "5")
    assert evaluation.returncode == 0 and "after job j" in evaluation.stdout, evaluation.stderr
    listing = advtui_cli(tmp_path, "queue", "ls", "--json")
    train, ev = json.loads(listing.stdout)
    assert (train["kind"], train["priority"], ev["kind"], ev["eval_options"]) == ("train", 5, "eval", {"limit": 5})
    table = advtui_cli(tmp_path, "queue", "ls").stdout
    assert train["id"] in table and ev["id"] in table and "natural" in table
    cancelled = advtui_cli(tmp_path, "queue", "cancel", train["id"])
    assert cancelled.returncode == 0 and f"cancelled job {train['id']}" in cancelled.stdout
    after = {j["id"]: j for j in json.loads(advtui_cli(tmp_path, "queue", "ls", "--json").stdout)}
    assert after[ev["id"]]["status"] == "cancelled"  # it waited on the cancelled training
    resumed = advtui_cli(tmp_path, "resume", "cli")
    assert resumed.returncode == 0 and "continues from the start" in resumed.stdout and "queued again" in resumed.stdout
    for args, message in ((["resume", "nothing"], "error: no run 'nothing'"),
                          (["queue", "cancel", "jffffff"], "error: no job 'jffffff'"),
                          (["kill", "cli", "--grace", "1"], "was queued: cancelled"),
                          (["queue", "train", "--defense", "plain", "--seeds", "x"], "error: --seeds must be")):
        proc = advtui_cli(tmp_path, *args)
        assert message in (proc.stdout + proc.stderr), (args, proc.stdout, proc.stderr)
        if message.startswith("error"):
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_resume_point_names_the_last_checkpoints_epoch_and_batch(tmp_path):
    # What `advtui resume` and the dashboard both say: where the last checkpoint was written
    # (the trainer's events count epochs from 0), not the record's count of finished epochs.
    registry = Registry(tmp_path)
    run = queue_train(registry, tiny()).run
    assert resume_point(registry, run) == "the start"  # no checkpoint yet
    run = {**run, "epoch": 1, "checkpoints": {"last": "checkpoints/last.pt"}}
    events = tmp_path / run["id"] / "events.jsonl"
    events.parent.mkdir(exist_ok=True)
    events.write_text(json.dumps({"kind": "checkpoint", "epoch": 0, "batch": 0, "name": "last.pt"}) + "\n"
                      + json.dumps({"kind": "checkpoint", "epoch": 1, "batch": 3, "name": "last.pt"}) + "\n"
                      + json.dumps({"kind": "checkpoint", "epoch": 1, "batch": 0, "name": "final.pt"}) + "\n")
    assert resume_point(registry, run) == "epoch 2 batch 3"
    events.write_text(json.dumps({"kind": "checkpoint", "epoch": 1, "batch": 0, "name": "last.pt"}) + "\n")
    assert resume_point(registry, run) == "the start of epoch 2"
