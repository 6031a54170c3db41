"""`dra-dali check-data` and the pre-flight header check: every kind of bad file is named by path,
and the files the pre-flight check blocks are exactly the ones DALI cannot decode."""

from __future__ import annotations

import io
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dra_dali.cli import main
from dra_dali.data import DataError, check_data, check_headers
from dra_dali.data.checks import BLOCKING, check_file, sniff_format

#: file name -> the kind check_data must report for it
EXPECTED = {
    "a/empty.jpg": "empty",
    "a/truncated.jpg": "truncated",
    "a/corrupt.jpg": "corrupt",
    "a/gif_renamed.jpg": "unsupported-format",
    "b/png_renamed.jpg": "wrong-extension",
    "b/text.jpg": "not-an-image",
    "b/cmyk.jpg": "cmyk",
    "b/deep.png": "high-bit-depth",
    "b/huge.png": "huge",
}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming the given size, then a tiny IDAT and IEND."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, embedded):
    root = tmp_path_factory.mktemp("bad")
    source = sorted((embedded.val / "cat").glob("*.jpg"))
    for cls in ("a", "b"):
        (root / cls).mkdir()
        for src in source[:3]:
            shutil.copy(src, root / cls / src.name)
    largest = max(source, key=lambda p: p.stat().st_size)
    good = largest.read_bytes()
    image = Image.open(largest).convert("RGB")
    (root / "a/empty.jpg").write_bytes(b"")
    (root / "a/truncated.jpg").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    # garbage over the scan data, keeping the header tables and the end marker
    garbage = (bytes(range(256)) * 64)[: len(good) - 700]
    corrupt[600:len(good) - 100] = garbage
    (root / "a/corrupt.jpg").write_bytes(bytes(corrupt))
    for name, fmt in (("a/gif_renamed.jpg", "GIF"), ("b/png_renamed.jpg", "PNG")):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        (root / name).write_bytes(buffer.getvalue())
    (root / "b/text.jpg").write_text("this is not a picture\n")
    image.convert("CMYK").save(root / "b/cmyk.jpg", quality=90)
    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 13 % 65536).astype(np.uint16)
    Image.fromarray(deep).save(root / "b/deep.png")
    assert Image.open(root / "b/deep.png").mode.startswith("I;16")
    (root / "b/huge.png").write_bytes(_png_header_only(40_000, 40_000))
    (root / "b/readme.txt").write_text("notes\n")
    return root


def test_check_data_names_every_bad_file_with_its_kind(bad_folder):
    report = check_data(bad_folder, threads=2)
    found = {str(p.path.relative_to(bad_folder)): p.kind for p in report.problems}
    for name, kind in EXPECTED.items():
        assert found.get(name) == kind, (name, found.get(name))
    assert found["b/readme.txt"] == "ignored"
    assert len(found) == len(EXPECTED) + 1                          # the good copies pass
    assert report.checked == 6 + len(EXPECTED) and not report.ok


def test_check_data_cli_exits_non_zero_and_prints_each_path(bad_folder):
    result = CliRunner().invoke(main, ["check-data", str(bad_folder), "--threads", "2"])
    assert result.exit_code == 1
    for name, kind in EXPECTED.items():
        assert f"{bad_folder / name}: {kind}:" in result.output, name


def test_check_data_cli_passes_a_clean_folder(embedded):
    result = CliRunner().invoke(main, ["check-data", str(embedded.val)])
    assert result.exit_code == 0, result.output
    assert "500 images checked, 0 with errors, 0 warnings" in result.output


def test_check_data_reads_file_lists_and_strict_counts_warnings(bad_folder, tmp_path):
    listing = bad_folder / "list.txt"
    listing.write_text("b/cmyk.jpg 0\na/" + sorted(p.name for p in (bad_folder / "a").iterdir()
                                                  if p.name.startswith("cat"))[0] + " 1\n")
    runner = CliRunner()
    result = runner.invoke(main, ["check-data", str(listing)])
    assert result.exit_code == 0 and "b/cmyk.jpg: cmyk" in result.output   # a warning only
    assert runner.invoke(main, ["check-data", str(listing), "--strict"]).exit_code == 1
    missing = runner.invoke(main, ["check-data", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "nothing" in missing.output


def test_header_check_blocks_unreadable_files_naming_them(bad_folder):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as info:
            check_headers(bad_folder)
    message = str(info.value)
    for name in ("a/empty.jpg", "a/truncated.jpg", "a/gif_renamed.jpg", "b/text.jpg",
                 "b/huge.png"):
        assert str(bad_folder / name) in message, name
    for name in ("b/png_renamed.jpg", "b/cmyk.jpg", "b/deep.png"):      # readable: warned
        assert str(bad_folder / name) not in message
        assert any(str(bad_folder / name) in str(w.message) for w in caught), name
    assert "dra-dali check-data" in message


def test_blocking_kinds_are_exactly_what_dali_cannot_decode(bad_folder):
    """Decode each file with DALI on the CPU: blocked ones fail, warned ones decode."""
    from nvidia.dali import fn, pipeline_def, types

    def dali_decodes(path) -> bool:
        @pipeline_def(batch_size=1, num_threads=1, device_id=None)
        def pipe():
            data, _ = fn.readers.file(files=[str(path)], labels=[0])
            return fn.decoders.image(data, device="cpu", output_type=types.RGB)

        p = pipe()
        p.build()
        try:
            out = p.run()[0]
            return np.array(out[0]).shape[-1] == 3
        except RuntimeError:
            return False
        finally:
            del p

    for name, kind in EXPECTED.items():
        if kind == "huge":
            continue                    # a header-only file; decoding 1.6 GP is not the point
        path = bad_folder / name
        assert dali_decodes(path) == (kind not in BLOCKING), (name, kind)
        assert [p.kind for p in check_file(path) if p.kind in BLOCKING] == (
            [kind] if kind in BLOCKING else [])


def test_sniff_format_by_magic_bytes():
    assert sniff_format(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_format(b"GIF89a....") == "gif"
    assert sniff_format(b"RIFF\0\0\0\0WEBPVP8 ") == "webp"
    assert sniff_format(b"P6\n64 64\n255\n") == "pnm"
    assert sniff_format(b"<html>") is None


def test_skip_bad_files_excludes_and_lists_them(bad_folder):
    from dra_dali.data import accept_images

    accepted = accept_images(bad_folder, skip_bad_files=True)
    skipped = {str(p.path.relative_to(bad_folder)) for p in accepted.excluded}
    assert skipped == {"a/empty.jpg", "a/truncated.jpg", "a/gif_renamed.jpg", "b/text.jpg",
                       "b/huge.png"}
    assert len(accepted.images) == 6 + len(EXPECTED) - 5
    assert accepted.images.classes == ("a", "b")
    listed = accepted.excluded_text().splitlines()
    assert len(listed) == 5 and f"{bad_folder / 'a/empty.jpg'}: empty: " in listed[0]
    decoded = accept_images(bad_folder, skip_bad_files=True, decode=True)
    assert "a/corrupt.jpg" in {str(p.path.relative_to(bad_folder)) for p in decoded.excluded}


def test_excluded_files_listing_reads_back(bad_folder, tmp_path):
    from dra_dali.data import EXCLUDED_FILE, accept_images, read_excluded

    accepted = accept_images(bad_folder, skip_bad_files=True, decode=True)
    (tmp_path / EXCLUDED_FILE).write_text(accepted.excluded_text())
    assert read_excluded(tmp_path) == accepted.excluded
    assert read_excluded(tmp_path / "nothing") == ()
    (tmp_path / EXCLUDED_FILE).write_text("a line without a kind\n")
    with pytest.raises(DataError, match=r"excluded_files.txt:1: not a 'path: kind: reason'"):
        read_excluded(tmp_path)


def test_check_data_skip_bad_files_previews_what_a_run_leaves_out(bad_folder, tmp_path):
    result = CliRunner().invoke(main, ["check-data", str(bad_folder), "--skip-bad-files"])
    assert result.exit_code == 0, result.output
    assert "with skip_bad_files, a run leaves out 6 unusable file(s) and uses 9 of 15" in \
        result.output
    assert f"ERROR {bad_folder / 'a/corrupt.jpg'}: corrupt" in result.output
    only_bad = tmp_path / "only_bad"
    for name in ("a/0.jpg", "b/0.jpg"):
        (only_bad / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(bad_folder / "a/empty.jpg", only_bad / "a/0.jpg")
    shutil.copy(next((bad_folder / "b").glob("*.jpg")), only_bad / "b/0.jpg")
    result = CliRunner().invoke(main, ["check-data", str(only_bad), "--skip-bad-files"])
    assert result.exit_code == 1
    assert "after skipping 1 unusable file(s), class(es) ['a'] hold no image" in result.output


def test_recheck_names_a_file_replaced_after_acceptance(tmp_path, embedded):
    from dra_dali.data import accept_images, name_culprits, recheck_changed

    source = sorted((embedded.val / "cat").glob("*.jpg"))[:3]
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for src in source:
            shutil.copy(src, tmp_path / cls / src.name)
    accepted = accept_images(tmp_path)
    assert recheck_changed(accepted) == []                        # a stat pass, nothing changed
    victim = tmp_path / "b" / source[1].name
    victim.write_bytes(b"\xff\xd8\xff\xe0junk")                   # replaced mid-run: 7 bytes
    found = recheck_changed(accepted)
    assert [(p.path, p.kind) for p in found] == [(victim, "truncated")]
    assert recheck_changed(accepted) == []                        # each change is checked once
    batch = [tmp_path / "a" / source[0].name, victim]
    assert [p.path for p in name_culprits(batch)] == [victim]


def test_decode_rgb_refuses_unusable_files_before_decoding(bad_folder):
    from dra_dali.data import decode_rgb

    good = sorted((bad_folder / "a").glob("cat*.jpg"))[0]
    pixels = decode_rgb([good, bad_folder / "b/cmyk.jpg"])
    assert [p.shape[2] for p in pixels] == [3, 3] and pixels[0].dtype == np.uint8
    with pytest.raises(DataError, match=r"(?s)2 unusable image file\(s\):.*a/corrupt.jpg: corrupt"):
        decode_rgb([good, bad_folder / "a/corrupt.jpg", bad_folder / "a/empty.jpg"])


def test_file_guard_names_replaced_files_at_epoch_start_and_after_a_decoder_failure(tmp_path,
                                                                                    embedded):
    from dra_dali.data import FileGuard, scan_images

    source = sorted((embedded.val / "cat").glob("*.jpg"))[:2]
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for src in source:
            shutil.copy(src, tmp_path / cls / src.name)
    guard = FileGuard(scan_images(tmp_path), "resume it")
    guard.check_epoch_start()
    victim = tmp_path / "a" / source[0].name
    victim.write_bytes(b"\xff\xd8\xff\xe0junk")
    with pytest.raises(DataError, match=r"(?s)1 file\(s\) replaced since the run started.*"
                                        r"a/cat_0000.jpg: truncated.*\nresume it$"):
        guard.check_epoch_start()
    error = guard.failure(RuntimeError("nvImageCodec failure: '#4'\nC++ context"))
    message = str(error)
    assert "the decoder failed (nvImageCodec failure: '#4')" in message      # all files checked
    assert f"{victim}: truncated" in message and message.endswith("\nresume it")
