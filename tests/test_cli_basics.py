"""CLI: preset and show, and the group's help."""

import subprocess
import sys

from click.testing import CliRunner

from dra_dali import Policy
from dra_dali.cli import main


def test_preset_then_show_with_plot(tmp_path):
    runner = CliRunner()
    out = tmp_path / "p.yaml"
    result = runner.invoke(main, ["preset", "dra-imagenet-resnet-50", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert Policy.load(out) == Policy.preset("dra-imagenet-resnet-50")
    plot = tmp_path / "p.png"
    result = runner.invoke(main, ["show", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("p.yaml: dra-policy/1")
    assert lines[2].startswith("2 layers, 16 operators, resolution 224, scale 1.0, fill 0")
    assert lines[4].split() == ["operator", "prob", "apply", "magnitude"]
    first = lines[5].split()
    assert first == ["Sharpness", "0.096", "U(0.2,0.8)", "N(0.404,", "0.290)"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def test_preset_unknown_name_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(main, ["preset", "nope", "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 1
    assert "unknown preset 'nope'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.yaml").exists()


def test_show_invalid_policy_names_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Policy.preset("ra-n2-m9").to_yaml().replace("scale: 1.0", "scale: -2"))
    result = CliRunner().invoke(main, ["show", str(bad)])
    assert result.exit_code == 1
    assert "invalid policy" in result.output and "scale: must be > 0" in result.output


def test_presets_lists_paper_policies():
    result = CliRunner().invoke(main, ["presets"])
    assert "dra-imagenet-resnet-200" in result.output.splitlines()


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "dra_dali.cli", "--help"], capture_output=True,
                            text=True, check=True)
    assert "preset" in result.stdout and "show" in result.stdout
