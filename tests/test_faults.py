"""Fault injection: every case of issue 14 as an adversarial user would try it.

Each test names the issue item it covers; each one failed on the code before the fix (commit
a445aec) and passes now. Long cases (the kill loops) are marked slow.
"""

from __future__ import annotations

import io
import shutil
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dra_dali.cli import main
from dra_dali.data import DataError, embedded_dataset, scan_images

pytestmark = pytest.mark.filterwarnings("ignore:.*DALI can read but with a caveat")

SIDE = 16


# --- crafted files ---------------------------------------------------------------------------

def _photo_jpeg(seed: int = 0, side: int = 128) -> bytes:
    """A smooth, noisy RGB JPEG (enough entropy-coded data to corrupt in the middle)."""
    x = np.linspace(0, 1, side)
    smooth = np.stack([np.outer(x, x), np.outer(1 - x, x), np.outer(x, 1 - x)], -1) * 230
    noise = np.random.default_rng(seed).integers(0, 25, smooth.shape)
    buffer = io.BytesIO()
    Image.fromarray((smooth + noise).clip(0, 255).astype(np.uint8)).save(buffer, "JPEG",
                                                                        quality=90)
    return buffer.getvalue()


def corrupt_but_decodable_jpeg() -> bytes:
    """Valid header and end marker, scrambled scan data: Pillow and DALI decode it (DALI prints
    "Corrupt JPEG data" without a path) into garbage pixels."""
    data = bytearray(_photo_jpeg())
    sos = data.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    for i in range(start + 50, start + 58):
        data[i] ^= 0x5A
    return bytes(data)


def twelve_bit_jpeg() -> bytes:
    """A JPEG whose frame header says 12-bit samples (DALI decodes 8-bit JPEGs only)."""
    data = bytearray(_photo_jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 4] = 12
    return bytes(data)


def png16(values: np.ndarray) -> bytes:
    """A 16-bit PNG (grayscale for 2-D values, RGB for (H, W, 3)), written by hand."""
    gray = values.ndim == 2
    h, w = values.shape[:2]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if gray else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _gif_named_jpg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (200, 30, 30)).save(buffer, "GIF")
    return buffer.getvalue()


def _folder(root: Path, extra: dict[str, bytes], per_class: int = 3) -> Path:
    """Two classes of good JPEGs plus ``extra`` files (relative path -> bytes)."""
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            colour = (40 + 100 * label, 60 + 20 * i, 90)
            Image.new("RGB", (SIDE, SIDE), colour).save(root / name / f"{i}.jpg", quality=95)
    for relative, data in extra.items():
        (root / relative).write_bytes(data)
    return root


def _proxy(data: Path):
    from dra_dali.search.config import SearchConfig
    from dra_dali.search.data import load_proxy

    return load_proxy(SearchConfig(data=str(data), resolution=SIDE, crop="pad", seed=0))


def _one_line_error(result) -> str:
    """The CLI failed with exit 1 and one ``Error:`` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


# --- item 1: no code from files ---------------------------------------------------------------

class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_item1_crafted_search_checkpoint_runs_no_code_on_resume(tmp_path, embedded):
    import torch

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": "dra-search-checkpoint/1", "payload": _Payload(marker)},
               out / "checkpoint.pt")
    result = CliRunner().invoke(main, ["search", "--data", str(embedded.train), "--out", str(out),
                                       "--recipe", "demo", "--resume"])
    assert not marker.exists(), "the checkpoint ran code"
    assert "checkpoint.pt" in _one_line_error(result)


# --- item 2: no silent bad data ---------------------------------------------------------------

def test_item2_check_data_decode_names_a_corrupt_but_decodable_jpeg(tmp_path):
    data = _folder(tmp_path / "d", {"a/garbled.jpg": corrupt_but_decodable_jpeg()})
    with Image.open(data / "a/garbled.jpg") as im:
        im.load()                                        # Pillow decodes it without complaint
    for flags in ([], ["--decode"]):                    # decoding is the default
        result = CliRunner().invoke(main, ["check-data", str(data), *flags])
        assert result.exit_code == 1
        assert f"{data / 'a/garbled.jpg'}: corrupt: corrupt JPEG data (libjpeg: Corrupt JPEG " \
               "data" in result.output
        assert "1 with errors" in result.output


@pytest.mark.parametrize("name,content,finding", [
    ("a/garbled.jpg", corrupt_but_decodable_jpeg(), "corrupt: corrupt JPEG data"),
    ("b/animation.jpg", _gif_named_jpg(), "unsupported-format: GIF image"),
], ids=["corrupt-but-decodable-jpeg", "gif-renamed-jpg"])
def test_item2_search_and_train_refuse_the_same_bad_files(tmp_path, name, content, finding):
    from dra_dali.train.config import TrainError
    from dra_dali.train.data import check_datasets

    data = _folder(tmp_path / "d", {name: content})
    with pytest.raises(DataError, match=rf"{name}: {finding}"):
        _proxy(data)
    with pytest.raises(TrainError, match=rf"(?s)data: .*{name}: {finding}"):
        check_datasets(str(data), str(data))


@pytest.mark.parametrize("kind", ["gray16", "rgb16"])
def test_item2_16_bit_images_become_the_same_pixels_in_search_and_train(tmp_path, kind):
    from nvidia.dali import fn, pipeline_def, types

    ramp = (np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) * 251 % 65536)
    values = ramp.astype(np.uint16)
    if kind == "rgb16":
        values = np.stack([values, values[::-1], values.T], -1)
    data = _folder(tmp_path / "d", {}, per_class=2)
    for name in ("a", "b"):
        (data / name / "deep.png").write_bytes(png16(values))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def train_decoder():                       # what train's DALI pipeline starts from
        jpegs, _ = fn.readers.file(files=[str(data / "a/deep.png")], labels=[0])
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

    pipe = train_decoder()
    pipe.build()
    train_pixels = np.array(pipe.run()[0][0])
    expected = np.round(values / 257).astype(np.uint8)
    expected = np.repeat(expected[..., None], 3, -1) if kind == "gray16" else expected
    assert np.array_equal(train_pixels, expected)
    proxy = _proxy(data)
    both = proxy.model_half.paths + proxy.policy_half.paths
    images = np.concatenate([proxy.model_half.images.numpy(), proxy.policy_half.images.numpy()])
    search_pixels = images[both.index(str(data / "a/deep.png"))].transpose(1, 2, 0)
    assert np.array_equal(search_pixels, train_pixels)   # not all white (255) as before


# --- item 3: mid-run failures -----------------------------------------------------------------

def test_item3_a_12_bit_jpeg_is_refused_before_train_starts(tmp_path):
    from dra_dali.train.config import TrainError
    from dra_dali.train.data import check_datasets

    data = _folder(tmp_path / "d", {"a/twelve.jpg": twelve_bit_jpeg()})
    with pytest.raises(TrainError, match=r"a/twelve.jpg: unsupported-depth: 12-bit JPEG"):
        check_datasets(str(data), str(data))


# --- item 3: skip_bad_files (train on, listing the files left out) ----------------------------

_BAD = {"a/garbled.jpg": corrupt_but_decodable_jpeg(), "b/text.jpg": b"hello, not a picture"}


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--val-data", str(data), "--out", str(out),
            "--pipeline", "demo", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--threads", "1", "--no-progress", *extra]


def _listed(out: Path) -> list[str]:
    """The paths ``excluded_files.txt`` names, each line ``path: kind: reason``."""
    return [line.split(": ")[0] for line in (out / "excluded_files.txt").read_text().splitlines()]


def test_item3_train_skip_bad_files_trains_on_lists_them_and_resumes_on_the_same_files(tmp_path):
    from dra_dali.runtime import load_checkpoint

    data = _folder(tmp_path / "d", _BAD, per_class=4)
    out = tmp_path / "run"
    line = _one_line_error(CliRunner().invoke(main, _train_args(data, out)))
    assert f"{data / 'a/garbled.jpg'}: corrupt" in line and f"{data / 'b/text.jpg'}" in line
    assert "skip_bad_files" in line and not (out / "checkpoint.pt").exists()
    with pytest.warns(UserWarning, match=r"skipping 2 unusable image file\(s\)"):
        result = CliRunner().invoke(main, _train_args(data, out, "--skip-bad-files"))
    assert result.exit_code == 0, result.output
    assert _listed(out) == [str(data / "a/garbled.jpg"), str(data / "b/text.jpg")]
    assert "a/garbled.jpg: corrupt: corrupt JPEG data" in (out / "excluded_files.txt").read_text()
    assert "skip_bad_files: true" in (out / "config.yaml").read_text()
    assert [r["train_images"] for r in _records(out)] == [8]        # 10 files, 2 left out
    # A resumed run trains on the files it started with: a repaired file stays out ...
    (data / "a/garbled.jpg").write_bytes((data / "a/0.jpg").read_bytes())
    more = ["--resume", "--force", "--epochs", "2", "--skip-bad-files"]
    result = CliRunner().invoke(main, _train_args(data, out, *more))
    assert result.exit_code == 0, result.output
    assert [r["train_images"] for r in _records(out)] == [8, 8]
    assert _listed(out) == [str(data / "a/garbled.jpg"), str(data / "b/text.jpg")]
    # ... and a file broken since is refused, named, rather than silently left out
    (data / "a/1.jpg").write_bytes(b"")
    line = _one_line_error(CliRunner().invoke(main, _train_args(
        data, out, "--resume", "--force", "--epochs", "3", "--skip-bad-files")))
    assert f"{data / 'a/1.jpg'}: empty" in line and "a resumed run trains on the files it " \
                                                    "started with" in line
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    # switching the setting on resume follows the override rules
    (data / "a/1.jpg").write_bytes((data / "a/0.jpg").read_bytes())
    line = _one_line_error(CliRunner().invoke(main, _train_args(
        data, out, "--resume", "--force", "--epochs", "3")))
    assert "skip_bad_files: True -> False" in line


def test_item3_search_skip_bad_files_lists_them_and_a_resume_draws_the_same_proxy(tmp_path):
    from dra_dali.data import read_excluded
    from dra_dali.search.config import SearchConfig
    from dra_dali.search.data import load_proxy

    data = _folder(tmp_path / "d", _BAD, per_class=4)
    out = tmp_path / "s"
    args = ["search", "--data", str(data), "--out", str(out), "--recipe", "demo", "--epochs",
            "1", "--batch-size", "2", "--set", "proxy_classes=2", "--set",
            "images_per_class=null"]
    line = _one_line_error(CliRunner().invoke(main, args))
    assert f"{data / 'b/text.jpg'}: not-an-image" in line
    with pytest.warns(UserWarning, match="skipping 1 unusable image file"):
        result = CliRunner().invoke(main, [*args, "--skip-bad-files"])
    assert result.exit_code == 0, result.output
    # the header check leaves out text.jpg; the strict check of the sample, garbled.jpg
    assert _listed(out) == [str(data / "b/text.jpg"), str(data / "a/garbled.jpg")]
    assert "skip_bad_files: true" in (out / "config.yaml").read_text()
    config = SearchConfig.from_recipe("demo", {"data": str(data), "skip_bad_files": True},
                                      {"proxy_classes": 2, "images_per_class": None})
    with pytest.warns(UserWarning):
        proxy = load_proxy(config)
    assert len(proxy.model_half) + len(proxy.policy_half) == 8    # 10 files, 2 left out
    (data / "a/garbled.jpg").write_bytes((data / "a/0.jpg").read_bytes())   # repaired
    resumed = load_proxy(config, read_excluded(out))
    assert resumed.model_half.paths == proxy.model_half.paths
    assert resumed.policy_half.paths == proxy.policy_half.paths
    with pytest.warns(UserWarning, match="skipping 1 unusable"):    # text.jpg only
        assert len(load_proxy(config).model_half) == 5             # a fresh start takes it back


# --- item 5: file-list bounds -----------------------------------------------------------------

def test_item5_huge_label_fails_fast_with_bounded_memory(tmp_path):
    _folder(tmp_path, {})
    listing = tmp_path / "list.txt"
    listing.write_text("a/0.jpg 0\nb/0.jpg 99999999\n")
    tracemalloc.start()
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["check-data", str(listing)])
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "list.txt:2: label 99999999 is out of range" in _one_line_error(result)
    assert seconds < 2 and peak < 50 * 2**20, (seconds, peak)


def test_item5_file_list_paths_stay_under_the_list_folder(tmp_path):
    _folder(tmp_path / "data", {})
    outside = tmp_path / "secret.jpg"
    shutil.copy(tmp_path / "data" / "a" / "0.jpg", outside)
    for line in ("../secret.jpg 0", f"{outside} 0", "a/../../secret.jpg 0"):
        (tmp_path / "data" / "list.txt").write_text(f"a/0.jpg 0\n{line}\n")
        with pytest.raises(DataError, match=r"list.txt:2: image path .* is outside the list's "
                                            r"folder"):
            scan_images(tmp_path / "data" / "list.txt")
    images = scan_images(tmp_path / "data" / "list.txt", allow_absolute=True)
    assert images.paths[1].resolve() == outside.resolve()
    (tmp_path / "data" / "list.txt").write_text("a/0.jpg 0\nb/0.jpg 3\n")
    with pytest.raises(DataError, match=r"list.txt:2: label 3 is out of range \(labels are 0 "
                                        r"\.\. 1 for 2 classes\)"):
        scan_images(tmp_path / "data" / "list.txt", num_classes=2)


# --- item 8: one clear line -------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"\x80\x02garbage", b"PK\x03\x04not a zip", b""])
def test_item8_garbage_search_checkpoint_is_one_line(tmp_path, embedded, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    result = CliRunner().invoke(main, ["search", "--data", str(embedded.train), "--out", str(out),
                                       "--recipe", "demo", "--resume"])
    assert "checkpoint.pt" in _one_line_error(result)


def test_item8_stale_cache_symlink_and_partial_cache_entry_are_rebuilt(tmp_path, monkeypatch):
    import dra_dali.data.embedded as embedded_module

    def quick_build(root: Path) -> None:                       # the layout, without the photos
        (root / "val" / "cat").mkdir(parents=True)
        (root / "val" / "cat" / "0.jpg").write_bytes(_photo_jpeg(side=8))
        (root / "dataset.json").write_text("{}")

    monkeypatch.setattr(embedded_module, "_build", quick_build)
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / "embedded-v2"
    entry.symlink_to(tmp_path / "gone")                        # a dangling symlink
    rebuilt = embedded_dataset(cache)
    assert rebuilt.root == entry and not entry.is_symlink()
    assert len(scan_images(rebuilt.val)) == 1
    (entry / "dataset.json").unlink()                          # a partial entry
    embedded_dataset(cache)
    assert (entry / "dataset.json").is_file()
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]


@pytest.mark.parametrize("setting,message", [
    ("scale=inf", "scale: must be a finite number, got inf"),
    ("lr=1e30", "lr: 1e+30 is out of range"),
    ("kl_weight=.nan", "kl_weight: must be a finite number, got nan"),
])
def test_item8_search_recipe_values_are_refused_before_any_work(tmp_path, embedded, setting,
                                                                message):
    import dra_dali.search  # noqa: F401  (imports are not what is timed)

    started = time.perf_counter()
    result = CliRunner().invoke(main, ["search", "--data", str(embedded.train), "--out",
                                       str(tmp_path / "run"), "--recipe", "demo", "--set",
                                       setting])
    assert message in _one_line_error(result)
    assert time.perf_counter() - started < 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,message", [
    (["--lr", "1e30"], "train.lr: must be at most 10"),
    (["--lr", "inf"], "train.lr: must be a finite number"),
    (["--weight-decay", "nan"], "train.weight_decay: must be a finite number"),
])
def test_item8_train_values_are_refused_before_any_work(tmp_path, embedded, flags, message):
    result = CliRunner().invoke(main, ["train", "--data", str(embedded.train), "--val-data",
                                       str(embedded.val), "--policy", "none", "--out",
                                       str(tmp_path / "run"), *flags])
    assert message in _one_line_error(result)
    assert not (tmp_path / "run").exists()


# --- item 4: bombs fail fast ------------------------------------------------------------------

_POLICY_HEAD = ("format: dra-policy/1\nops: [Rotate, Invert]\nresolution: 32\nscale: 1.0\n"
                "apply_prob: [0.2, 0.8]\n")
_LAYER = "- logits: [0.1, 0.2]\n  mean: [0.5, 0.5]\n  std: [0.1, 0.1]\n"


def _alias_bomb(key: str = "provenance") -> str:
    """~1.5 KB: nine levels of nine aliases each (9**9 = 387 million leaves once expanded)."""
    lines = [f"{key}:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def _crafted_policies() -> dict[str, bytes]:
    deep = "[" * 5000 + "]" * 5000
    return {
        "alias-bomb": (_POLICY_HEAD + "layers:\n" + _LAYER + _alias_bomb()).encode(),
        "binary": bytes(range(256)) * 64,
        "deep-nesting": (_POLICY_HEAD + "layers:\n" + _LAYER + f"provenance: {{x: {deep}}}\n"
                         ).encode(),
        "huge-mean-std": (_POLICY_HEAD + "layers:\n- logits: [0.1, 0.2]\n  mean: [1e300, 0.5]\n"
                          "  std: [0.1, 1e300]\n").encode(),
        "200-layers": (_POLICY_HEAD + "layers:\n" + _LAYER * 200).encode(),
    }


def _fails_fast(args: list[str]) -> str:
    """Run a command that must fail: one line, under 2 s, under 200 MiB of Python allocations
    (measured in a second run: tracing allocations slows Python down several times)."""
    started = time.perf_counter()
    result = CliRunner().invoke(main, args)
    seconds = time.perf_counter() - started
    line = _one_line_error(result)
    tracemalloc.start()
    CliRunner().invoke(main, args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 2 and peak < 200 * 2**20, (args[0], seconds, peak / 2**20)
    return line


@pytest.fixture(scope="module")
def warm_imports():
    """Import what the commands import, so that the timings measure the checks only."""
    import dra_dali.dali.export  # noqa: F401
    import dra_dali.search  # noqa: F401
    import dra_dali.train  # noqa: F401
    import dra_dali.viz  # noqa: F401


@pytest.mark.parametrize("case", sorted(_crafted_policies()))
def test_item4_crafted_policies_fail_fast_in_show_compile_and_train(tmp_path, embedded, case,
                                                                   warm_imports):
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(_crafted_policies()[case])
    for args in (["show", str(path)],
                 ["compile", str(path), "--out", str(tmp_path / "compiled")],
                 ["train", "--data", str(embedded.train), "--val-data", str(embedded.val),
                  "--policy", str(path), "--out", str(tmp_path / "run"), "--pipeline", "demo"]):
        line = _fails_fast(args)
        assert f"{case}.yaml" in line, (args[0], line)


def test_item4_crafted_recipes_fail_fast(tmp_path, embedded, warm_imports):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb("provenance"))
    line = _fails_fast(["search", "--data", str(embedded.train), "--out", str(tmp_path / "s"),
                        "--recipe", str(bomb)])
    assert "bomb.yaml" in line
    line = _fails_fast(["train", "--data", str(embedded.train), "--val-data", str(embedded.val),
                        "--policy", "none", "--out", str(tmp_path / "t"), "--pipeline",
                        str(bomb)])
    assert "bomb.yaml" in line


# --- done-when: a kill loop loses nothing (slow) ------------------------------------------------

def _command(args: list[str]) -> list[str]:
    import sys

    return [sys.executable, "-m", "dra_dali.cli", *args]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _wait_for_lock(out: Path, pid: int, proc, timeout: float = 120.0) -> bool:
    """True once the process holds the run directory (its pid in ``.lock``); False if it
    exited first."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if f"pid {pid} " in (out / ".lock").read_text():
                return True
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError(f"{out}: the run never took its lock")


def _finished_file(args: list[str], out: Path) -> Path:
    return out / ("policy.yaml" if args[0] == "search" else "summary.json")


def _timed_run(args: list[str], out: Path) -> float:
    """Run to the end; the seconds from taking the lock to writing the final file (what follows
    is the interpreter's exit, where a kill loses nothing)."""
    import subprocess

    proc = subprocess.Popen(_command(args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert _wait_for_lock(out, proc.pid, proc)
    started, finished = time.perf_counter(), _finished_file(args, out)
    while not finished.exists() and proc.poll() is None:
        time.sleep(0.01)
    working = time.perf_counter() - started
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return working


def _remaining(out: Path, epochs: int) -> float:
    """The share of the run a (resumed) process still has to do, from its checkpoint."""
    from dra_dali.runtime import load_checkpoint

    if not (out / "checkpoint.pt").exists():
        return 1.0
    return max(epochs - int(load_checkpoint(out / "checkpoint.pt")["epoch"]), 1) / epochs


def _kill_moment(out: Path, proc, window: float, rng) -> None:
    """Wait for the moment to kill: half the time the temporary file of a checkpoint write (the
    write in flight), else a random moment of ``window``."""
    during_write = rng.random() < 0.5
    deadline = time.perf_counter() + (window if during_write else rng.uniform(0, window))
    while time.perf_counter() < deadline and proc.poll() is None:
        if during_write and (out / f".checkpoint.pt.tmp-{proc.pid}").exists():
            return
        time.sleep(0.001 if during_write else 0.01)


def _kill_sequence(args: list[str], out: Path, kills: int, window: float, rng) -> dict:
    """One run in ``out``: SIGKILL it up to ``kills`` times (:func:`_kill_moment`, within the
    share of ``window`` left to do), each time continuing with --resume (or starting again when
    no checkpoint was written yet), until it finishes. Returns what happened."""
    import signal
    import subprocess

    done = {"kills": 0, "runs": 0, "temp_left_by_kill": 0, "killed_after_finish": 0}
    epochs = int(args[args.index("--epochs") + 1])
    while True:
        if done["runs"] and _finished_file(args, out).exists():
            # The last SIGKILL landed after the run had written its final file (while the
            # interpreter was exiting): the run is complete, and --resume rightly refuses it.
            done["killed_after_finish"] += 1
            return done
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        share = _remaining(out, epochs)
        proc = subprocess.Popen(_command(args + resume), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        done["runs"] += 1
        if done["kills"] < kills and _wait_for_lock(out, proc.pid, proc):
            _kill_moment(out, proc, window * share, rng)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done["kills"] += 1
                done["temp_left_by_kill"] += bool(list(out.glob(".*.tmp-*")))
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        return done


def _kill_loop(args: list[str], root: Path, kills: int, window: float, check) -> list[dict]:
    """Kill sequences in fresh run directories until ``kills`` SIGKILLs were sent; ``check(out)``
    compares each finished run with the uninterrupted one."""
    import random

    rng = random.Random(14)
    reports: list[dict] = []
    while sum(r["kills"] for r in reports) < kills:
        out = root / f"killed-{len(reports)}"
        left = kills - sum(r["kills"] for r in reports)
        reports.append(_kill_sequence(args + ["--out", str(out)], out, left, window, rng))
        check(out)
    return reports


def _records(out: Path) -> list[dict]:
    import json

    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _same_records(a: list[dict], b: list[dict], timing: set[str]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in timing} == \
               {k: v for k, v in y.items() if k not in timing}, (x, y)


@pytest.mark.slow
def test_kill_loop_search_loses_nothing(tmp_path, embedded):
    from dra_dali.policy import Policy

    args = ["search", "--data", str(embedded.train), "--recipe", "demo", "--epochs", "4",
            "--batch-size", "8", "--set", "images_per_class=8", "--set", "proxy_classes=4"]
    reference = tmp_path / "reference"
    window = _timed_run(args + ["--out", str(reference)], reference)
    def check(out: Path) -> None:
        _same_records(_records(out), _records(reference), timing={"seconds"})
        assert [r["epoch"] for r in _records(out)] == [0, 1, 2, 3, 4]
        a, b = Policy.load(out / "policy.yaml"), Policy.load(reference / "policy.yaml")
        assert a.layers == b.layers and a.ops == b.ops
        assert not list(out.glob(".*.tmp-*")) and not list(out.glob("*.tmp"))

    reports = _kill_loop(args, tmp_path, kills=20, window=window, check=check)
    print(f"search kill loop: {reports}; working time of one run {window:.1f} s")


def _churn(originals: dict[Path, bytes], stop) -> None:
    """Truncate and rewrite the files over and over until ``stop`` is set."""
    while not stop.is_set():
        for path, content in originals.items():
            path.write_bytes(b"garbage")                # 7 bytes, as in the issue
            path.write_bytes(content)


@pytest.mark.slow
def test_files_rewritten_while_dali_reads_them_never_kill_the_process(tmp_path, embedded):
    """Issue 14 item 3: a file truncated and rewritten while DALI reads it crashed `train` with no
    message (the issue: exit 139; here, with memory-mapped reads, SIGBUS exit 135 in 6 of 11
    runs). With plain reads every run ends with exit 0 or one line, exit 1."""
    import subprocess
    import threading

    data, val = _two_classes(tmp_path, embedded, 64, 4)
    files = sorted(data.rglob("*.jpg"))
    originals = {f: f.read_bytes() for f in files}
    outcomes = []
    for attempt in range(3):
        out = tmp_path / f"run-{attempt}"
        proc = subprocess.Popen(_command([
            "train", "--data", str(data), "--val-data", str(val), "--out", str(out),
            "--pipeline", "demo", "--epochs", "4", "--batch-size", "8", "--threads", "1",
            "--device", "cpu", "--no-progress"]), env=_env(), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        assert _wait_for_lock(out, proc.pid, proc)
        stop = threading.Event()
        churner = threading.Thread(target=_churn, args=(originals, stop))
        churner.start()
        try:
            _, err = proc.communicate(timeout=600)
        finally:
            stop.set()
            churner.join()
        outcomes.append(proc.returncode)
        assert proc.returncode in (0, 1), (proc.returncode, err[-2000:])
        if proc.returncode:
            assert "Traceback" not in err and err.count("Error:") == 1, err[-2000:]
    print(f"exit codes with files rewritten during training: {outcomes}")


def _train_on_runtime() -> bool:
    import importlib.util

    return importlib.util.find_spec("dra_dali.train.trainer") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _train_on_runtime(),
                    reason="runs once train is on dra_dali.runtime (dra_dali/train/trainer.py)")
def test_kill_loop_train_loses_nothing(tmp_path, embedded):
    args = ["train", "--data", str(embedded.train), "--val-data", str(embedded.val), "--policy",
            "ra-n2-m9", "--pipeline", "demo", "--model", "resnet-tiny", "--epochs", "3",
            "--batch-size", "16", "--max-steps", "6", "--device", "cpu", "--no-progress"]
    reference = tmp_path / "reference"
    window = _timed_run(args + ["--out", str(reference)], reference)
    timing = {"images_per_s", "train_seconds", "epoch_seconds"}

    def check(out: Path) -> None:
        _same_records(_records(out), _records(reference), timing)
        assert [r["epoch"] for r in _records(out)] == [1, 2, 3]
        assert not list(out.glob(".*.tmp-*")) and not list(out.glob("*.tmp"))

    reports = _kill_loop(args, tmp_path, kills=20, window=window, check=check)
    print(f"train kill loop: {reports}; working time of one run {window:.1f} s")


def _two_classes(root: Path, embedded, train_count: int, val_count: int) -> tuple[Path, Path]:
    """``root/train`` and ``root/val``: the first images of two embedded classes."""
    for split, count in (("train", train_count), ("val", val_count)):
        for name in embedded.classes[:2]:
            (root / split / name).mkdir(parents=True)
            for f in sorted((getattr(embedded, split) / name).iterdir())[:count]:
                shutil.copy(f, root / split / name / f.name)
    return root / "train", root / "val"


@pytest.mark.parametrize("split", ["train", "val"])
def test_item3_a_file_replaced_mid_run_is_named_and_the_checkpoint_kept(tmp_path, embedded,
                                                                        split):
    from dra_dali.runtime import load_checkpoint
    from dra_dali.train import TrainConfig, train

    data, val = _two_classes(tmp_path, embedded, 8, 4)
    victim = sorted((tmp_path / split / embedded.classes[0]).iterdir())[3]

    def replace_during_second_epoch(epoch: int, step: int, labels) -> None:
        if (epoch, step) == (1, 0):
            victim.write_text("this is not a picture\n")

    config = TrainConfig(data=str(data), val_data=str(val), out=str(tmp_path / "run"),
                         policy="none", pipeline="demo", epochs=4, batch_size=4, threads=1,
                         lr=0.05)
    with pytest.raises(DataError, match=rf"(?s){victim}: not-an-image.*continue with resume"):
        train(config, progress=False, batch_hook=replace_during_second_epoch)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] >= 1


def test_item3_files_broken_mid_epoch_are_named_a_mid_epoch_checkpoint_kept_and_resume_exact(
        tmp_path, embedded):
    """Files replaced after the epoch-start check reach DALI, whose decoder fails on a prefetched
    batch: the error names them, the checkpoint holds the steps done inside the epoch, and once
    the files are restored, --resume ends exactly where an unbroken run ends."""
    from dra_dali.runtime import load_checkpoint
    from dra_dali.train import TrainConfig, train

    data, val = _two_classes(tmp_path, embedded, 16, 4)
    victims = sorted((data / embedded.classes[0]).iterdir())
    originals = {v: v.read_bytes() for v in victims}

    def break_them_mid_epoch(epoch: int, step: int, labels) -> None:
        if (epoch, step) == (1, 1):
            for v in victims:
                v.write_bytes(b"garbage")         # 7 bytes, as in the issue

    def config(out: str) -> TrainConfig:
        return TrainConfig(data=str(data), val_data=str(val), out=str(tmp_path / out),
                           policy="ra-n2-m9", pipeline="demo", epochs=2, batch_size=4,
                           threads=1, lr=0.05, device="cpu")

    reference = train(config("reference"), progress=False)
    with pytest.raises(DataError) as caught:
        train(config("run"), progress=False, batch_hook=break_them_mid_epoch)
    message = str(caught.value)
    assert "the decoder failed (nvImageCodec failure" in message
    assert all(f"{v}: not-an-image" in message for v in victims[:20])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1 and 2 <= state["step_in_epoch"] < 8      # inside epoch 2 of 2
    assert message.endswith(f"a checkpoint at epoch 2, step {state['step_in_epoch']} of 8 is "
                            f"saved in {tmp_path / 'run' / 'checkpoint.pt'}; fix or remove the "
                            "file(s), then continue with resume")
    for victim, content in originals.items():
        victim.write_bytes(content)
    resumed = train(config("run"), progress=False, resume=True)
    timing = {"images_per_s", "train_seconds", "epoch_seconds"}
    _same_records(resumed.metrics, reference.metrics, timing)
    assert [r["epoch"] for r in _records(tmp_path / "run")] == [1, 2]
