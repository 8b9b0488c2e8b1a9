"""The job queue and the deployment configuration, without MLflow."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from reef_forensics.cli.main import main
from reef_forensics.errors import BadInputError
from reef_forensics.mlops.config import load_config
from reef_forensics.mlops.jobqueue import JobQueue


def test_enqueue_is_idempotent_per_version(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite")
    assert queue.enqueue("m", 1, "models:/m-1") is True
    assert queue.enqueue("m", "1", "models:/m-1") is False  # the store and a webhook, both
    assert queue.enqueue("m", 2) is True
    assert [(j.name, j.version, j.state) for j in queue.jobs()] == [
        ("m", "1", "pending"),
        ("m", "2", "pending"),
    ]


def test_a_lease_that_runs_out_hands_the_job_to_another_worker(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite", lease_seconds=10)
    queue.enqueue("m", 1)
    first = queue.claim("a", now=1e10)
    assert first is not None and first.attempts == 1
    assert queue.claim("b", now=1e10 + 5) is None  # leased to a
    again = queue.claim("b", now=1e10 + 11)  # a died: its lease ran out
    assert again is not None and again.id == first.id and again.attempts == 2
    queue.complete(again)
    assert queue.counts() == {
        "pending": 0,
        "running": 0,
        "done": 1,
        "failed": 0,
        "skipped": 0,
        "cancelled": 0,
    }
    assert queue.claim("c", now=1e10 + 100) is None


def test_a_job_that_keeps_killing_its_workers_fails_instead_of_looping(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite", lease_seconds=10, max_attempts=3)
    queue.enqueue("poison", 1)
    queue.enqueue("fine", 1)
    moment = 1e10
    for attempt in (1, 2, 3):  # each worker takes the oldest job first and dies on it
        job = queue.claim(f"w{attempt}", now=moment)
        assert job is not None and (job.name, job.attempts) == ("poison", attempt)
        moment += 11
    after = queue.claim("w4", now=moment)  # the lease of the third ran out: the queue moves on
    assert after is not None and after.name == "fine"
    (poison,) = [j for j in queue.jobs() if j.name == "poison"]
    assert poison.state == "failed" and poison.last_error is not None
    assert "stopped during each of 3 attempts" in poison.last_error


def test_a_renewed_lease_keeps_the_job_and_a_lost_one_says_so(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite", lease_seconds=10)
    queue.enqueue("m", 1)
    job = queue.claim("a", now=1e10)
    assert job is not None
    assert queue.renew(job, "a", now=1e10 + 8)  # still working at 8 s: held until 18 s
    assert queue.claim("b", now=1e10 + 15) is None
    assert not queue.renew(job, "b", now=1e10 + 15)  # only the holder renews
    assert queue.claim("b", now=1e10 + 19) is not None  # a stopped renewing: b takes it
    assert not queue.renew(job, "a", now=1e10 + 20)  # a hears that it lost the job


def test_a_worker_keeps_its_lease_through_a_job_longer_than_the_lease(tmp_path: Path) -> None:
    import threading
    import time

    from reef_forensics.mlops.config import Config
    from reef_forensics.mlops.worker import Worker

    config = Config(tracking_uri="http://127.0.0.1:9", queue=tmp_path / "q.sqlite")
    queue = JobQueue(config.queue, lease_seconds=0.6)
    queue.enqueue("slow", 1)
    stolen: list[object] = []

    class SlowWorker(Worker):
        def process(self, job):  # type: ignore[no-untyped-def]
            for _ in range(10):  # 2 s of work, more than three leases
                time.sleep(0.2)
                stolen.append(queue.claim("thief"))

    worker = SlowWorker(config, queue, name="holder")
    job = queue.claim("holder")
    assert job is not None
    thread = threading.Thread(target=worker.handle, args=(job,))
    thread.start()
    thread.join()
    assert stolen == [None] * 10
    (done,) = queue.jobs()
    assert done.state == "done" and done.attempts == 1


def test_delivery_ids_are_kept_for_the_replay_window_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    queue = JobQueue(tmp_path / "q.sqlite")
    clock = [1e9]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    assert queue.seen_delivery("old", forget_after=600) is False
    clock[0] += 500
    assert queue.seen_delivery("old", forget_after=600) is True  # inside the window: a replay
    clock[0] += 200  # 700 s after the first: forgotten (its timestamp is refused by now)
    assert queue.seen_delivery("new", forget_after=600) is False
    assert queue.seen_delivery("old", forget_after=600) is False


def test_failures_back_off_then_stop(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite", max_attempts=3, backoff_seconds=100)
    queue.enqueue("m", 1)
    job = queue.claim("a")
    assert job is not None and queue.fail(job, "boom") == "pending"
    assert queue.claim("a") is None  # not due for 100 s
    assert queue.claim("a", now=2e10) is not None  # due later
    (job,) = queue.jobs()
    assert queue.fail(job, "boom") == "pending"
    job = queue.claim("a", now=3e10)
    assert job is not None and job.attempts == 3
    assert queue.fail(job, "boom again") == "failed"
    (job,) = queue.jobs()
    assert job.state == "failed" and job.last_error == "boom again"
    queue.enqueue("m", 2)
    job = queue.claim("a")
    assert job is not None and queue.fail(job, "cannot load", retry=False) == "failed"


def test_replayed_deliveries_are_recognised(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite")
    assert queue.seen_delivery("d-1") is False
    assert queue.seen_delivery("d-1") is True
    assert queue.seen_delivery("d-2") is False


def _enqueue_many(path: str, start: int) -> None:
    queue = JobQueue(path)
    for i in range(start, start + 50):
        queue.enqueue("m", i)
        queue.enqueue("m", i)


def test_processes_share_the_queue(tmp_path: Path) -> None:
    path = str(tmp_path / "q.sqlite")
    JobQueue(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_enqueue_many, args=(path, s)) for s in (0, 25, 50)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert len(JobQueue(path).jobs()) == 100  # 0..99, each once
    queue = JobQueue(path)
    claimed = set()
    while (job := queue.claim("w")) is not None:
        claimed.add(job.version)
        queue.complete(job)
    assert len(claimed) == 100


# --- configuration --------------------------------------------------------------------------


def test_configuration_paths_are_relative_to_the_file_and_env_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "reef.toml"
    path.write_text(
        'tracking_uri = "sqlite:///x.db"\nqueue = "q.sqlite"\n'
        '[screening]\nvictims = ["models:/a/1", "fp/victim"]\nalpha = 0.001\n'
    )
    monkeypatch.delenv("REEF_QUEUE", raising=False)
    monkeypatch.delenv("REEF_TRACKING_URI", raising=False)
    config = load_config(path)
    assert config.queue == tmp_path / "conf" / "q.sqlite"
    assert config.victims == ("models:/a/1", str(tmp_path / "conf" / "fp" / "victim"))
    assert config.rule == {"alpha": 0.001} and config.tracking_uri == "sqlite:///x.db"
    monkeypatch.setenv("REEF_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_config(path).tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense = 1\n", "unknown key 'nonsense'"),
        ("[signing]\nkeyfile = 'x'\n", "unknown key(s) in [signing]: keyfile"),
        ("[screening]\nmin_references = 2\n", "at least 3 references"),
        ("[screening]\nmin_references = 3.0\n", "min_references must be an integer, not 3.0"),
        ("[screening]\nmargin = true\n", "margin must be a number, not True"),
        ("[worker]\nmax_attempts = -1\n", "[worker] max_attempts must be a non-negative number"),
        ("[screening]\nvictims = 'models:/a/1'\n", "[screening] victims must be a list"),
        ("tracking_uri = \n", "is not valid TOML"),
    ],
)
def test_bad_configuration_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "reef.toml"
    path.write_text(text)
    with pytest.raises(BadInputError):
        load_config(path)
    assert main(["config", "check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_check_reports_each_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reef_forensics.crypto.keys import generate_keys

    keys = generate_keys(tmp_path / "keys", b"pw")
    monkeypatch.setenv("REEF_KEY_PASSPHRASE", "pw")
    path = tmp_path / "reef.toml"
    path.write_text(
        f'tracking_uri = "sqlite:///{tmp_path}/mlflow.db"\nqueue = "q.sqlite"\n'
        f'[signing]\nkey = "{keys.private_key}"\ncert = "{keys.signer_certificate}"\n'
        '[screening]\nreferences = ["missing/fingerprint"]\n'
    )
    assert main(["config", "check", "--config", str(path)]) == 1  # the reference is missing
    out = capsys.readouterr().out
    assert "ok    signing key: loaded with its certificate" in out
    assert "FAIL  reference" in out and out.rstrip().endswith(f"NOT VALID: {path}")
    path.write_text(
        path.read_text().replace('references = ["missing/fingerprint"]', "references = []")
    )
    assert main(["config", "check", "--config", str(path), "--json", "-"]) == 0


def test_paths_from_the_environment_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "reef.toml"
    path.write_text('queue = "q.sqlite"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REEF_QUEUE", "elsewhere/q.sqlite")
    assert load_config(path).queue == tmp_path / "elsewhere" / "q.sqlite"


# --- operating the queue (issue 17): release, skip, `reef-forensics queue` -----------------------


def test_only_the_holder_releases_a_job_and_the_attempt_is_not_counted(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite")
    queue.enqueue("m", 1)
    job = queue.claim("a")
    assert job is not None and job.attempts == 1
    assert queue.release(job, "b", "stopping") is False  # b does not hold it
    assert queue.release(job, "a", "stopping") is True
    (after,) = queue.jobs()
    assert (after.state, after.attempts, after.last_error) == ("pending", 0, "stopping")
    again = queue.claim("b")  # due at once
    assert again is not None and again.attempts == 1
    queue.skip(again, "not a transformers model")
    assert queue.counts()["skipped"] == 1 and queue.claim("c") is None


def queue_config(tmp_path: Path) -> tuple[Path, JobQueue]:
    path = tmp_path / "reef.toml"
    path.write_text('queue = "q.sqlite"\n')
    return path, JobQueue(tmp_path / "q.sqlite")


def test_queue_list_retry_and_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, queue = queue_config(tmp_path)
    for version in (1, 2, 3):
        queue.enqueue("m", version)
    first = queue.claim("w")
    assert first is not None
    queue.fail(first, "it broke", retry=False)
    assert main(["queue", "list", "--config", str(config), "--json", "-"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["id"], j["state"], j["last_error"]) for j in listed["jobs"]] == [
        (1, "failed", "it broke"),
        (2, "pending", None),
        (3, "pending", None),
    ]
    assert listed["jobs"][0]["updated"].endswith("Z") and listed["jobs"][0]["worker"] == "w"
    assert main(["queue", "list", "--config", str(config), "--state", "failed"]) == 0
    out = capsys.readouterr().out
    assert "m/1  (it broke)" in out and "m/2" not in out and "1 job(s)" in out
    assert main(["queue", "cancel", "2", "--config", str(config)]) == 0
    assert "job 2: cancelled (was pending)" in capsys.readouterr().out
    assert main(["queue", "retry", "1", "2", "--config", str(config), "--json", "-"]) == 0
    retried = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["id"], j["state"], j["changed"]) for j in retried] == [
        (1, "pending", True),
        (2, "pending", True),
    ]
    assert [(j.state, j.attempts) for j in queue.jobs()] == [("pending", 0)] * 3
    assert {j.id for j in (queue.claim("x"), queue.claim("y"), queue.claim("z")) if j} == {1, 2, 3}


def test_queue_commands_refuse_unknown_ids_and_say_what_they_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, queue = queue_config(tmp_path)
    queue.enqueue("m", 1)
    queue.enqueue("m", 2)
    running = queue.claim("w")
    assert running is not None and running.id == 1
    for action in ("retry", "cancel"):
        assert main(["queue", action, "2", "42", "7", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no job 42, 7 in the queue" in err, err
        assert queue.jobs()[1].state == "pending"  # nothing changed: the ids are checked first
    assert main(["queue", "retry", "1", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "job 1: running" in out and "a worker holds it" in err
    assert main(["queue", "cancel", "1", "--config", str(config)]) == 1
    assert "not cancelled" in capsys.readouterr().out
    assert queue.jobs()[0].state == "running"
    with pytest.raises(SystemExit) as exit_info:
        main(["queue", "retry", "x1", "--config", str(config)])
    assert exit_info.value.code == 2 and "not a job id" in capsys.readouterr().err
    assert main(["queue", "list", "--state", "stuck", "--config", str(config)]) == 2
    assert "unknown state 'stuck'" in capsys.readouterr().err


def test_requeue_reopens_a_finished_job_and_leaves_a_live_one(tmp_path: Path) -> None:
    queue = JobQueue(tmp_path / "q.sqlite")
    assert queue.requeue("m", 1) is True  # a version never queued
    job = queue.claim("w")
    assert job is not None
    assert queue.requeue("m", 1) is False  # running: left to its worker
    queue.complete(job)
    assert queue.requeue("m", 1) is True  # done: a victim was added since
    assert [(j.state, j.attempts) for j in queue.jobs()] == [("pending", 0)]
    assert queue.requeue("m", 1) is False  # already pending


def test_the_evidence_experiment_and_reconcile_period_are_configurable(tmp_path: Path) -> None:
    config = tmp_path / "reef.toml"
    config.write_text('[evidence]\nexperiment = "audit"\n[worker]\nreconcile_seconds = 60\n')
    loaded = load_config(config)
    assert (loaded.evidence_experiment, loaded.reconcile_seconds) == ("audit", 60.0)
    assert load_config(None).evidence_experiment == "reef-evidence"
    config.write_text("[evidence]\nexperiment = 3\n")
    with pytest.raises(BadInputError, match=r"\[evidence\] experiment"):
        load_config(config)
