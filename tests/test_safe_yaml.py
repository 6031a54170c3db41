"""safe_yaml.load_yaml: plain YAML only, bounded size, alias expansion and depth, one-line errors,
and the recipe readers that use it."""

import time

import pytest

from dra_dali.errors import DraDaliError
from dra_dali.safe_yaml import YamlError, load_yaml


def _bomb(levels: int = 9) -> str:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    names = "abcdefghijklmnop"
    for previous, name in zip(names[:levels - 1], names[1:levels]):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_text_bytes_and_paths(tmp_path):
    assert load_yaml("a: [1, 2]") == {"a": [1, 2]}
    assert load_yaml(b"\xef\xbb\xbfa: 1") == {"a": 1}                    # UTF-8 BOM
    assert load_yaml("") is None
    file = tmp_path / "r.yaml"
    file.write_text("x: {y: 3}\n")
    assert load_yaml(file, what="recipe") == {"x": {"y": 3}}


def test_alias_expansion_is_counted_not_built():
    # 925 nodes once expanded (c alone is 9 * (9 * 10 + 1) + 1): within 1000, not within 800
    assert len(load_yaml(_bomb(3), max_nodes=1000)["c"]) == 9
    with pytest.raises(YamlError, match="more than 800 values"):
        load_yaml(_bomb(3), max_nodes=800)
    start = time.perf_counter()
    with pytest.raises(YamlError, match="alias bomb"):
        load_yaml(_bomb(12))
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("text,message", [
    ("a: &x {b: *x}", r"alias \*x refers to an anchor that is not complete"),
    ("a: *nowhere", r"alias \*nowhere"),
    ("x: " + "{a: " * 70 + "1" + "}" * 70, "nested deeper than 64 levels"),
    ("x: !!python/name:os.system", "tags such as !!python/object are not allowed at line 1"),
    ("x: !custom 3", "tags such as !!python/object are not allowed"),
    ("a: 1\n  b: 2", r"not valid YAML at line 2, column 4"),
])
def test_refusals_are_one_line(text, message):
    with pytest.raises(YamlError, match=message) as info:
        load_yaml(text, what="policy")
    assert "\n" not in str(info.value) and str(info.value).startswith("policy: ")


def test_own_error_type_and_file_name(tmp_path):
    class RecipeProblem(DraDaliError):
        pass

    file = tmp_path / "bin.yaml"
    file.write_bytes(bytes(range(256)))
    with pytest.raises(RecipeProblem, match=f"search recipe {file}: binary data"):
        load_yaml(file, what="search recipe", error=RecipeProblem)
    with pytest.raises(RecipeProblem, match=f"search recipe {tmp_path / 'no.yaml'}: cannot read"):
        load_yaml(tmp_path / "no.yaml", what="search recipe", error=RecipeProblem)
    with pytest.raises(YamlError, match=r"too large \(11 bytes; the limit is 10\)"):
        load_yaml("a: 12345678", max_bytes=10)


def test_recipe_readers_refuse_bombs(tmp_path):
    from dra_dali.dali.pipelines import RecipeError, load_recipe
    from dra_dali.search import ConfigError, SearchConfig

    file = tmp_path / "bomb.yaml"
    file.write_text(_bomb())
    with pytest.raises(ConfigError, match=f"search recipe {file}: more than"):
        SearchConfig.from_recipe(str(file))
    with pytest.raises(RecipeError, match=f"pipeline recipe {file}: more than"):
        load_recipe(str(file))
    with pytest.raises(ConfigError, match="ops: not valid YAML"):
        SearchConfig.from_recipe("demo", {}, {"ops": "[Rotate, "})
