"""The runtime layer: atomic writes, checkpoints, metrics.jsonl, run directories, stop signals,
seeds. Each failure mode of issue 14 item 4 is pinned here at the library level."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from dra_dali.errors import DraDaliError
from dra_dali.runtime import (
    CheckpointError,
    MetricsError,
    MetricsLog,
    RunDir,
    RunDirError,
    Stopped,
    StopSignals,
    WriteError,
    atomic_write,
    derive_seed,
    load_checkpoint,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"lr": 0.1, "epochs": 3, "seed": 0, "ops": ["Rotate", "Invert"], "threads": 2}


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- atomic_write ----------------------------------------------------------------------------

def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write(target, "old")
    assert atomic_write(target, b"new") == target
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_refuses_a_symlink_target(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    link = tmp_path / "run" / "config.yaml"
    link.parent.mkdir()
    link.symlink_to(outside)
    with pytest.raises(WriteError, match=r"config.yaml: is a symbolic link; refusing"):
        atomic_write(link, "planted")
    assert outside.read_text() == "keep me" and link.is_symlink()


def test_disk_full_is_one_line_naming_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    save_checkpoint(target, {"epoch": 1})
    monkeypatch.setattr(os, "write", _enospc)
    with pytest.raises(WriteError) as info:
        save_checkpoint(target, {"epoch": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{target}: disk full")
    assert isinstance(info.value, DraDaliError)
    assert load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_an_interrupted_write_removes_its_temporary(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.txt", "data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=r"x.txt: cannot write \(Permission denied\)"):
            atomic_write(tmp_path / "x.txt", "data")
    finally:
        tmp_path.chmod(0o700)


def test_remove_stale_temps_removes_only_temporaries(tmp_path):
    for name in (".checkpoint.pt.tmp-123", ".metrics.jsonl.tmp-9", "config.yaml.tmp",
                 "checkpoint.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".checkpoint.pt.tmp-123", ".metrics.jsonl.tmp-9",
                                         "config.yaml.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "notes.txt"]


# --- checkpoints -----------------------------------------------------------------------------

class _Payload:
    """Unpickling it runs code (what a crafted checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_load_checkpoint_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoint.pt"
    torch.save({"format": "dra-search-checkpoint/1", "x": _Payload(marker)}, crafted)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: not a readable dra-dali checkpoint"):
        load_checkpoint(crafted)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"PK\x03\x04 half a zip"])
def test_garbage_checkpoints_are_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable dra-dali checkpoint")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_round_trip_with_rng_states(tmp_path):
    torch.manual_seed(5)
    saved = rng_state()
    expected = torch.rand(3)
    save_checkpoint(tmp_path / "sub" / "c.pt", {"epoch": 2, "rng": saved})
    torch.manual_seed(99)
    set_rng_state(load_checkpoint(tmp_path / "sub" / "c.pt")["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_train_checkpoint_module_re_exports_the_runtime(tmp_path):
    from dra_dali.train import checkpoint as old

    assert old.save_checkpoint is save_checkpoint and old.rng_state is rng_state
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="bad.pt: not a readable dra-dali checkpoint"):
        old.load_checkpoint(tmp_path / "bad.pt")


# --- metrics.jsonl ---------------------------------------------------------------------------

def test_metrics_tolerate_a_partial_last_line_and_truncate_on_resume(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.start_fresh()
    for epoch in (1, 2, 3):
        log.append({"epoch": epoch, "loss": 1.0 / epoch})
    with open(log.path, "a") as handle:
        handle.write('{"epoch": 4, "lo')               # killed mid-line
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]
    assert [r["epoch"] for r in log.truncate_to_epoch(2)] == [1, 2]
    assert log.path.read_text() == '{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "loss": 0.5}\n'


def test_metrics_append_after_a_partial_line_keeps_lines_whole(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.path.write_text('{"epoch": 1}\n{"epo')
    log.append({"epoch": 2})
    assert log.path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    log.path.write_text('{"epo')
    log.append({"epoch": 1})
    assert log.path.read_text() == '{"epoch": 1}\n'


def test_metrics_start_fresh_and_a_damaged_middle_line(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(MetricsError, match=r"metrics.jsonl:2: not a JSON record"):
        log.read()
    log.start_fresh()
    assert log.read() == [] and log.path.read_text() == ""
    assert MetricsLog(tmp_path / "none.jsonl").read() == []


# --- RunDir ----------------------------------------------------------------------------------

def _finished_epochs(out: Path, epochs: int, config=CONFIG) -> None:
    with RunDir(out, "train", config) as run:
        for epoch in range(1, epochs + 1):
            run.metrics.append({"epoch": epoch})
            run.save_checkpoint({"epoch": epoch})


def test_run_dir_lock_refuses_a_second_process_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from dra_dali.runtime import RunDir
            with RunDir({str(out)!r}, "train", {{"lr": 0.1}}):
                print("locked", flush=True)
                time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"run: in use by another run \(pid {holder.pid} "):
            with RunDir(out, "train", {"lr": 0.1}, force=True):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunDir(out, "train", {"lr": 0.1}, force=True):   # released when the holder died
        pass


def test_run_dir_lock_within_one_process_and_release_on_exit(tmp_path):
    with RunDir(tmp_path / "r", "search", CONFIG):
        with pytest.raises(RunDirError, match="in use by another run"):
            RunDir(tmp_path / "r", "search", CONFIG, force=True).__enter__()
    with RunDir(tmp_path / "r", "search", CONFIG, force=True):
        pass


def test_fresh_run_starts_fresh_metrics_and_cleans_temporaries(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    # a run killed during its first checkpoint write: config, a metrics line, a temporary
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (out / ".checkpoint.pt.tmp-4242").write_bytes(b"half")
    with RunDir(out, "train", CONFIG) as run:
        assert run.metrics.read() == [] and not run.resumed
        run.metrics.append({"epoch": 1})
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "metrics.jsonl"]


def test_fresh_run_refuses_a_folder_with_a_run_unless_forced(tmp_path):
    out = tmp_path / "run"
    _finished_epochs(out, 2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"already holds an unfinished run \(checkpoint.pt\)"):
        with RunDir(out, "train", CONFIG):
            pass
    assert (out / "checkpoint.pt").exists()                          # nothing changed
    with RunDir(out, "train", CONFIG, force=True) as run:
        assert run.metrics.read() == []
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "metrics.jsonl",
                                                     "notes.txt"]


def test_resume_truncates_metrics_to_the_checkpoint_and_returns_its_state(tmp_path):
    out = tmp_path / "run"
    _finished_epochs(out, 2)
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 3}\n{"epoch": 4, "par')         # epoch 3 recorded, then killed
    with RunDir(out, "train", CONFIG, resume=True) as run:
        assert run.resumed and run.state == {"epoch": 2}
        assert [r["epoch"] for r in run.metrics.read()] == [1, 2]


def test_resume_refuses_changed_settings_unless_overridden_and_records_them(tmp_path):
    out = tmp_path / "run"
    _finished_epochs(out, 1)
    changed = {**CONFIG, "lr": 0.05, "ops": ["Rotate"], "threads": 8}
    with pytest.raises(RunDirError, match=r"other settings \(lr: 0.1 -> 0.05, ops: \['Rotate', "
                                          r"'Invert'\] -> \['Rotate'\], threads: 2 -> 8\)"):
        with RunDir(out, "train", changed, resume=True):
            pass
    with pytest.raises(RunDirError, match=r"other settings \(ops: "):
        with RunDir(out, "train", changed, resume=True, overrides=["lr"], ignore=["threads"]):
            pass
    with RunDir(out, "train", changed, resume=True, overrides=["lr", "ops"],
                ignore=["threads"]) as run:
        assert run.overridden == {"lr": (0.1, 0.05), "ops": (["Rotate", "Invert"], ["Rotate"])}
    record = MetricsLog(out / "overrides.jsonl").read()
    assert [r["changed"]["lr"] for r in record] == [{"saved": 0.1, "now": 0.05}]
    assert record[0]["from_epoch"] == 1
    with RunDir(out, "train", changed, resume=True):        # the new values are now the saved ones
        pass
    with pytest.raises(RunDirError, match="override of unknown setting"):
        with RunDir(out, "train", changed, resume=True, overrides=["nonsense"]):
            pass


def test_resume_of_a_run_saved_before_a_setting_existed_takes_its_default(tmp_path):
    out = tmp_path / "run"
    _finished_epochs(out, 1)                                 # config.yaml without skip_bad_files
    newer = {**CONFIG, "skip_bad_files": False}
    defaults = {"skip_bad_files": False, "lr": 0.1, "seed": 0}
    with pytest.raises(RunDirError, match=r"other settings \(skip_bad_files: None -> False\)"):
        with RunDir(out, "train", newer, resume=True):       # no defaults: as before the fix
            pass
    with pytest.raises(RunDirError, match=r"other settings \(skip_bad_files: False -> True\)"):
        with RunDir(out, "train", {**newer, "skip_bad_files": True}, resume=True,
                    defaults=defaults):                        # not the default: a change
            pass
    with RunDir(out, "train", newer, resume=True, defaults=defaults) as run:
        assert run.resumed and run.overridden == {}
    assert "skip_bad_files: false" in (out / "config.yaml").read_text()


def test_resume_needs_a_checkpoint_and_refuses_finished_or_garbage(tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume .the folder does not exist"):
        RunDir(tmp_path / "missing", "train", CONFIG, resume=True).__enter__()
    assert not (tmp_path / "missing").exists()
    out = tmp_path / "run"
    with RunDir(out, "search", CONFIG):
        pass
    with pytest.raises(RunDirError, match=r"nothing to resume \(no checkpoint.pt\)"):
        RunDir(out, "search", CONFIG, resume=True).__enter__()
    (out / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(RunDirError, match=r"checkpoint.pt: not a readable dra-dali checkpoint"):
        RunDir(out, "search", CONFIG, resume=True).__enter__()
    save_checkpoint(out / "checkpoint.pt", {"epoch": 3})
    (out / "policy.yaml").write_text("done")
    with pytest.raises(RunDirError, match=r"holds a finished run \(policy.yaml\)"):
        RunDir(out, "search", CONFIG, resume=True).__enter__()


def test_symlinks_inside_the_run_dir_are_refused(tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").symlink_to(target)
    with pytest.raises(RunDirError, match=r"config.yaml: symbolic link inside the run directory"):
        RunDir(out, "train", CONFIG).__enter__()
    assert target.read_text() == "precious"


def test_dangling_and_non_folder_out_are_one_line(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match=r"dangling: is a symbolic link to .*nowhere, which"):
        RunDir(tmp_path / "dangling", "train", CONFIG).__enter__()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="exists and is not a folder"):
        RunDir(tmp_path / "file", "train", CONFIG).__enter__()


def test_read_only_out_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "ro").mkdir(mode=0o500)
    try:
        with pytest.raises(RunDirError, match=r"ro: cannot write to the run directory"):
            RunDir(tmp_path / "ro", "train", CONFIG).__enter__()
        with pytest.raises(RunDirError, match=r"sub: cannot create the run directory"):
            RunDir(tmp_path / "ro" / "sub", "train", CONFIG).__enter__()
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_an_alias_bomb_in_a_saved_config_is_refused_fast(tmp_path):
    out = tmp_path / "run"
    _finished_epochs(out, 1)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 12)]
    (out / "config.yaml").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    with pytest.raises(RunDirError, match="config.yaml: .*alias"):
        RunDir(out, "train", CONFIG, resume=True).__enter__()
    assert time.perf_counter() - started < 2


# --- stop signals and seeds ------------------------------------------------------------------

_STOP_SCRIPT = """
import sys, time
from dra_dali.runtime import StopSignals
with StopSignals() as stop:
    print("ready", flush=True)
    deadline = time.time() + 30
    while not stop.requested and time.time() < deadline:
        time.sleep(0.01)                      # one "step"
    print("saving", flush=True)               # the safe point: a checkpoint would go here
sys.exit(stop.exit_code)
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signals_exit_codes(sig, code):
    proc = subprocess.Popen([sys.executable, "-c", _STOP_SCRIPT], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert proc.stdout.read().strip() == "saving"


def test_stop_signals_flag_and_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert not stop.requested and stop.exit_code is None
        stop.raise_if_requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
        with pytest.raises(Stopped) as info:
            stop.raise_if_requested()
        assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(0, "dali", 3) == 1_959_965_339
    seeds = {derive_seed(s, name, e) for s in range(3) for name in ("dali", "search")
             for e in range(10)}
    assert len(seeds) == 60 and all(0 <= s < 2**31 - 1 for s in seeds)
