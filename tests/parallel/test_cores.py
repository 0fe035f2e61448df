"""Every core of a CPU: how many a run may use (trainer.parallel.cores), the processes
``--cpu_processes N`` starts (trainer.parallel.launch), and the choice between threads and processes
(trainer.app.parallelism)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cifar_files import write_cifar
from cli_tools import ENV, MAIN, ROOT, TINY, assert_same_training_state, load, run_main
from configure import Config
from trainer.app import parallelism as choice
from trainer.parallel import cores, launch

TIMEOUT = 240
FLAGS = [*TINY, "--split_index", "32", "--quiet", "--save_interval", "1"]
LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("cores") / "data")
    write_cifar(data_dir, n_per_batch=8, n_test=40)
    return data_dir


# --------------------------------------------------------------------------------------------
# How many cores

def cgroup(tmp_path, v2=None, v1=None):
    root = tmp_path / "cgroup"
    root.mkdir()
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return str(root)


@pytest.mark.parametrize("v2, v1, env, count, why", [
    (None, None, {}, 16, "the cores this process may run on"),
    ("max 100000", None, {}, 16, "the cores this process may run on"),
    ("200000 100000", None, {}, 2, "a CPU quota of 2"),
    ("250000 100000", None, {}, 3, "a CPU quota of 2.5"),
    ("50000 100000", None, {}, 1, "a CPU quota of 0.5"),
    (None, (-1, 100000), {}, 16, "the cores this process may run on"),
    (None, (400000, 100000), {}, 4, "a CPU quota of 4"),
    ("400000 100000", None, {"OMP_NUM_THREADS": "3"}, 3, "OMP_NUM_THREADS=3"),
    (None, None, {"OMP_NUM_THREADS": "junk"}, 16, "the cores this process may run on"),
])
def test_the_usable_cores_are_the_fewest_of_affinity_quota_and_omp_threads(tmp_path, v2, v1, env,
                                                                           count, why):
    found = cores.usable(environ=env, root=cgroup(tmp_path, v2, v1), ids=range(16))
    assert found.count == count
    assert found.ids == tuple(range(count))
    assert found.limited_by == why


def test_a_process_limited_by_taskset_counts_only_its_cores():
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a system that tells a process's cores, and two of them")
    first = min(os.sched_getaffinity(0))
    code = ("from trainer.parallel import cores; c = cores.usable(environ={}); "
            "print(c.count, c.ids)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=ENV, preexec_fn=lambda: os.sched_setaffinity(0, {first}))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", f"({first},)"]


# --------------------------------------------------------------------------------------------
# The launcher

# A worker: writes what it was given to out<RANK>, then runs the test's tail.
WORKER = """import json, os, sys, time
r = int(os.environ["RANK"])
cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
with open(os.path.join(sys.argv[1], f"out{r}"), "w") as f:
    json.dump([r, os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"], os.environ["MASTER_ADDR"],
               os.environ["OMP_NUM_THREADS"], cores], f)
"""


def run_workers(tail: str, count: int, cores_, tmp_path):
    status = launch.run([sys.executable, "-c", WORKER + tail, str(tmp_path)], count, cores_)
    written = [tmp_path / f"out{r}" for r in range(count)]
    return status, [json.loads(p.read_text()) for p in written if p.exists()]


def test_the_workers_get_torchruns_environment_one_thread_and_a_core_each(tmp_path):
    ids = tuple(sorted(os.sched_getaffinity(0)))[:2] if hasattr(os, "sched_getaffinity") else ()
    status, written = run_workers("", 2, ids, tmp_path)
    assert status == 0
    assert len(written) == 2
    for rank, values in enumerate(written):
        assert values[:5] == [rank, "2", str(rank), "127.0.0.1", "1"]
        if len(ids) == 2:
            assert values[5] == [ids[rank]]


@pytest.mark.parametrize("tail, expected", [
    ("sys.exit(0)", 0),
    ("sys.exit(3 if r == 0 else 0)", 3),
    ("sys.exit(4 if r == 1 else 0)", 4),
    ("sys.exit(5 if r == 0 else 6)", 5),
    ("os.kill(os.getpid(), 15) if r == 1 else None", 143),
])
def test_the_exit_status_is_rank_0s_or_the_first_failure(tmp_path, tail, expected):
    assert run_workers(tail, 2, (), tmp_path)[0] == expected


def test_a_failing_worker_stops_the_others(tmp_path):
    started = time.monotonic()
    status, _ = run_workers("time.sleep(60) if r == 0 else sys.exit(2)", 2, (), tmp_path)
    assert status != 0
    assert time.monotonic() - started < 30  # not the sleeper's 60 s


def test_a_worker_stopped_for_anothers_failure_leaves_the_status_to_that_failure(tmp_path):
    # rank 0 would run on; rank 1's failure stops it, and the status is rank 1's, not SIGTERM's
    status, _ = run_workers("time.sleep(60) if r == 0 else sys.exit(4)", 2, (), tmp_path)
    assert status == 4


def signal_launcher_later(signums, delay=1.0):
    """Send this process each of ``signums``, ``delay`` seconds apart, from a thread."""
    import threading

    def send():
        for signum in signums:
            time.sleep(delay)
            os.kill(os.getpid(), signum)
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


# A worker that stops slowly on SIGINT with 130, rank 1 failing at once with 1.
SLOW_STOP = ("import signal\n"
             "def stop(*_):\n"
             "    if r == 1: os._exit(1)\n"
             "    time.sleep(2); os._exit(130)\n"
             "signal.signal(signal.SIGINT, stop)\n"
             "time.sleep(60)\n")


def test_a_stop_by_signal_is_not_cut_short_when_one_worker_exits_first(tmp_path):
    received = []
    thread = signal_launcher_later([signal.SIGINT])
    status = launch.run([sys.executable, "-c", WORKER + SLOW_STOP, str(tmp_path)], 2,
                        signals=received)
    thread.join()
    assert received == [signal.SIGINT]
    assert status == 130  # rank 0 stopped as it chose, not by the launcher's SIGTERM (143)


def test_a_second_ctrl_c_kills_workers_that_ignore_the_first(tmp_path):
    ignore = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n"
    started = time.monotonic()
    thread = signal_launcher_later([signal.SIGINT, signal.SIGINT], delay=1.5)
    status = launch.run([sys.executable, "-c", WORKER + ignore, str(tmp_path)], 2)
    thread.join()
    assert status == 128 + signal.SIGKILL
    assert time.monotonic() - started < 30


# Workers that stop in a second with 130 on SIGINT, once each has its handler ("ready<rank>").
CLEAN_STOP = ("import signal\n"
              "def stop(*_):\n"
              "    time.sleep(1); os._exit(130)\n"
              "signal.signal(signal.SIGINT, stop)\n"
              "open(os.path.join(sys.argv[1], f'ready{r}'), 'w').close()\n"
              "time.sleep(60)\n")


def test_one_ctrl_c_delivered_twice_at_once_still_stops_cleanly(tmp_path):
    import threading

    def send_twice():  # as from the terminal and from a wrapper that passes it on
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{r}").exists() for r in range(2)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)
    thread = threading.Thread(target=send_twice, daemon=True)
    thread.start()
    received = []
    status = launch.run([sys.executable, "-c", WORKER + CLEAN_STOP, str(tmp_path)], 2,
                        signals=received)
    thread.join()
    assert received == [signal.SIGINT, signal.SIGINT]
    assert status == 130  # the workers stopped as they chose, not killed (137)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_processes_are_timed_stops_the_run(monkeypatch, capsys, signum):
    def interrupted_run(command, count, ids, signals, **kwargs):
        signals.append(signum)
        return 128 + signum
    monkeypatch.setattr(launch, "run", interrupted_run)
    config = Config(network="airbench", width_scale=0.25, device="cpu", amp="off")
    found = cores.Cores(2, (0, 1), "the cores this process may run on")
    if signum == signal.SIGINT:  # main says "interrupted" and exits with 130
        with pytest.raises(KeyboardInterrupt):
            choice.time_processes(config, found, choice.timing_cache.Off())
    else:
        with pytest.raises(SystemExit) as stopped:
            choice.time_processes(config, found, choice.timing_cache.Off())
        assert stopped.value.code == 143 and "SIGTERM" in capsys.readouterr().err


def test_what_the_launcher_decided_reaches_the_workers_beside_the_command_line(tmp_path):
    code = ("import json, os, sys; from trainer.parallel import launch; "
            "json.dump([launch.decided(), sys.argv[1:]], open(os.path.join(sys.argv[1], "
            "'out' + os.environ['RANK']), 'w'))")
    status = launch.run([sys.executable, "-c", code, str(tmp_path)], 2,
                        environ={"PYTHONPATH": ROOT}, decided={"amp": "bf16", "cpu_processes": 2})
    assert status == 0
    for rank in range(2):
        assert json.loads((tmp_path / f"out{rank}").read_text()) == \
            [{"amp": "bf16", "cpu_processes": 2}, [str(tmp_path)]]
    assert launch.decided({}) == {}


def test_the_workers_count_the_budget_from_the_launchers_start():
    env = launch.worker_environment(1, 2, 1234, started=12.5, environ={})
    assert launch.launched(env) and not launch.launched({})
    assert launch.started_at(99.0, env) == 12.5
    assert launch.started_at(99.0, {}) == 99.0


# --------------------------------------------------------------------------------------------
# The choice

FOUND = cores.Cores(2, (0, 1), "the cores this process may run on")


def fake_timings(monkeypatch, threads_seconds, processes_seconds, calls):
    def threads(config, count, cache):
        calls.append(("threads", count, config.width_scale))
        return "bf16", threads_seconds, None

    def processes(config, found, cache):
        calls.append(("processes", found.count, config.amp, config.cpu_processes))
        return processes_seconds
    monkeypatch.setattr(choice, "time_threads", threads)
    monkeypatch.setattr(choice, "time_processes", processes)


@pytest.mark.parametrize("threads_s, processes_s, expected", [
    (1.0, 0.5, 2), (1.0, 0.95, 1), (1.0, 1 / 1.1, 2), (1.0, None, 1), (0.5, 1.0, 1)])
def test_auto_keeps_processes_only_when_clearly_faster(monkeypatch, threads_s, processes_s,
                                                       expected):
    calls, lines = [], []
    fake_timings(monkeypatch, threads_s, processes_s, calls)
    config = Config(recipe="speed", budget_minutes=5).apply_recipe()
    decision = choice.decide(config, FOUND, log=lines.append)
    assert decision.processes == expected
    assert decision.threads == (1 if expected == 2 else 2)
    assert decision.amp == "bf16"
    # timed on the network the width chooser builds first, the processes at the precision chosen
    assert calls == [("threads", 2, 0.5), ("processes", 2, "bf16", 2)]
    assert lines[-1].endswith(f"(--cpu_processes {expected})")


def test_a_count_given_or_one_core_is_not_timed(monkeypatch):
    calls, lines = [], []
    fake_timings(monkeypatch, 1.0, 0.1, calls)
    assert choice.decide(Config(cpu_processes=3), FOUND, log=lines.append).processes == 3
    one = cores.Cores(1, (0,), "OMP_NUM_THREADS=1")
    assert choice.decide(Config(cpu_processes=0), one, log=lines.append).processes == 1
    assert calls == []
    assert lines == ["cores: 2 usable (the cores this process may run on) -> 3 processes of 1 "
                     "thread (--cpu_processes 3)",
                     "cores: 1 usable (OMP_NUM_THREADS=1) -> 1 process of 1 thread "
                     "(--cpu_processes 1)"]


def test_a_batch_that_does_not_divide_among_the_processes_trains_as_threads(monkeypatch):
    calls, lines = [], []
    fake_timings(monkeypatch, 1.0, 0.1, calls)
    decision = choice.decide(Config(cpu_processes=0, batch_size=127), FOUND, log=lines.append)
    assert (decision.processes, decision.threads, calls) == (1, 2, [])
    assert "--batch_size 127 does not divide among 2 processes" in lines[-1]


# --------------------------------------------------------------------------------------------
# Whole runs

def torchrun(args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           MAIN, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)


def test_two_cpu_processes_train_as_torchrun_does_and_a_resume_keeps_them(cifar, tmp_path):
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", ours, "--max_epoch", "1",
                  "--cpu_processes", "2", *FLAGS])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-> 2 processes of 1 thread (--cpu_processes 2)" in r.stdout
    assert "on 2 processes (gloo)" in r.stdout
    assert r.stdout.count("config: ") == 1  # said once, by the launcher
    with open(os.path.join(ours, "config.json")) as f:
        assert json.load(f)["config"]["cpu_processes"] == 2
    t = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", theirs, "--max_epoch",
                  "1", *FLAGS])
    assert t.returncode == 0, t.stdout + t.stderr
    assert_same_training_state(load(os.path.join(ours, "model-1.ckpt")),
                               load(os.path.join(theirs, "model-1.ckpt")))
    # --cpu_processes 0 on a resume: the checkpoint's count, not timed again
    r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", ours, "--max_epoch", "2",
                  "--resume", "--cpu_processes", "0", *FLAGS])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "-> 2 processes of 1 thread (--cpu_processes 2)" in r.stdout
    assert "img/s as threads" not in r.stdout
    t = torchrun(["--mode", "train", "--data_dir", cifar, "--modeldir", theirs, "--max_epoch",
                  "2", "--resume", *FLAGS])
    assert t.returncode == 0, t.stdout + t.stderr
    assert_same_training_state(load(os.path.join(ours, "model-2.ckpt")),
                               load(os.path.join(theirs, "model-2.ckpt")))


def test_auto_times_both_and_records_what_it_chose(cifar, tmp_path):
    modeldir = str(tmp_path / "auto")
    r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, "--max_epoch",
                  "1", "--cpu_processes", "0", *FLAGS])
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("cores: "))
    with open(os.path.join(modeldir, "config.json")) as f:
        recorded = json.load(f)["config"]["cpu_processes"]
    assert line.endswith(f"(--cpu_processes {recorded})")
    if cores.usable().count > 1:
        assert "img/s as threads" in line and "as processes" in line
        assert ("on 2 processes (gloo)" in r.stdout) == (recorded == 2)


def test_a_refused_folder_is_refused_before_any_timing(cifar, tmp_path):
    modeldir = str(tmp_path / "used")
    r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, "--max_epoch",
                  "1", *FLAGS])
    assert r.returncode == 0, r.stderr
    r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, "--max_epoch",
                  "1", "--cpu_processes", "0", *FLAGS])
    assert r.returncode == 2 or r.returncode == 1, r.stdout + r.stderr
    assert "cores:" not in r.stdout
    assert "--overwrite" in r.stderr and "Traceback" not in r.stderr


def test_a_held_folder_or_missing_data_is_refused_before_any_timing(cifar, tmp_path):
    from trainer.run import checkpoints
    held = tmp_path / "held"
    held.mkdir()
    with checkpoints.RunLock(str(held)):  # another run is using it
        r = run_main(["--mode", "train", "--data_dir", cifar, "--modeldir", str(held),
                      "--max_epoch", "1", "--cpu_processes", "0", *FLAGS])
    assert r.returncode == 1 and "cores:" not in r.stdout, r.stdout + r.stderr
    assert "another training run" in r.stderr and "Traceback" not in r.stderr
    r = run_main(["--mode", "train", "--data_dir", str(tmp_path / "nothing"), "--no_download",
                  "--modeldir", str(tmp_path / "new"), "--max_epoch", "1", "--cpu_processes", "0",
                  *FLAGS])
    assert r.returncode == 1 and "cores:" not in r.stdout, r.stdout + r.stderr
    assert "nothing" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not LINUX, reason="a worker learns of its launcher's death on Linux only")
def test_workers_of_a_killed_launcher_save_and_stop(cifar, tmp_path):
    modeldir = str(tmp_path / "killed")
    args = ["--mode", "train", "--data_dir", cifar, "--modeldir", modeldir, "--max_epoch", "1",
            "--cpu_processes", "2", *FLAGS]
    proc = subprocess.Popen([sys.executable, MAIN, *args], cwd=ROOT,
                            env=dict(ENV, RESNET_CIFAR_PAUSE_AT="1:2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        for line in proc.stderr:
            if "paused before step 2" in line:
                break
            assert time.monotonic() < deadline
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        path = os.path.join(modeldir, "interrupted.ckpt")
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        interrupted = load(path)
        assert (interrupted["epoch"], interrupted["step"]) == (0, 3)  # as under torchrun
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_probe_gets_the_users_relative_paths_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RESNET_CIFAR_TIMINGS", os.path.join("times", "steps.json"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # absolute already
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    added = choice.probe_environment()
    # the probe runs in the repository's folder: a relative file would be another one
    assert added["RESNET_CIFAR_TIMINGS"] == str(tmp_path / "times" / "steps.json")
    assert "TORCH_HOME" not in added and "XDG_CACHE_HOME" not in added
    assert added["PYTHONPATH"].split(os.pathsep)[0] == ROOT
    monkeypatch.setenv("RESNET_CIFAR_TIMINGS", "off")
    assert "RESNET_CIFAR_TIMINGS" not in choice.probe_environment()
