"""Rules of docker/Dockerfile, checked without a Docker engine.

The Dockerfile is read with ``dockerfile-parse`` (instructions, stages, ARG substitution); only the
values inside an instruction (an image reference, a shell command) are split further, with
``shlex``. Each rule is a function returning a list of problems, so the same rule is shown to
accept the real Dockerfile and to reject a Dockerfile that breaks it.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
INSTALL_SH = ROOT / "docker" / "install.sh"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
DOCKERIGNORE = ROOT / ".dockerignore"

SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "KEY")
APT_UNPINNED_NOTE = "not pinned"  # the comment that documents unpinned apt packages
PIP_OPTIONS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url",
                          "--extra-index-url", "-f", "--find-links", "-t", "--target",
                          "--python-version", "--platform", "--only-binary", "--no-binary"}


@dataclass
class Stage:
    """One build stage: its parent image, its name and its instructions (comments included)."""

    parent: str
    name: str | None
    instructions: list[dict] = field(default_factory=list)


def parse_stages(content: str) -> list[Stage]:
    """Split a Dockerfile into stages with dockerfile-parse (ARG defaults substituted in FROM)."""
    parser = DockerfileParser(fileobj=io.BytesIO(content.encode()))
    parents = iter(parser.parent_images)
    stages: list[Stage] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(parent=next(parents), name=name))
        if stages:
            stages[-1].instructions.append(item)
    return stages


def _of(stage: Stage, instruction: str) -> list[dict]:
    return [i for i in stage.instructions if i["instruction"] == instruction]


def _shell_commands(run_value: str) -> list[list[str]]:
    """The simple commands of a RUN line: shell words split at &&, ||, ; and |."""
    lexer = shlex.shlex(run_value, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word and set(word) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    return [c for c in commands if c]


def _env_names(instruction: dict) -> list[str]:
    """Variable names declared by an ARG or ENV instruction (``K=V K2=V2``, ``K``, ``K V``)."""
    words = shlex.split(instruction["value"])
    if instruction["instruction"] == "ENV" and words and "=" not in words[0]:
        return [words[0]]  # legacy form: ENV NAME value with spaces
    return [w.split("=", 1)[0] for w in words]


def _stage_env(stage: Stage, before_line: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in _of(stage, "ENV"):
        if item["startline"] < before_line:
            for word in shlex.split(item["value"]):
                if "=" in word:
                    key, value = word.split("=", 1)
                    env[key] = value
    return env


def _comments_above(stage: Stage, instruction: dict) -> str:
    """The comment block directly above an instruction (nothing between them)."""
    lines: list[str] = []
    index = stage.instructions.index(instruction)
    expected = instruction["startline"] - 1
    for item in reversed(stage.instructions[:index]):
        if item["instruction"] != "COMMENT" or item["endline"] != expected:
            break
        lines.insert(0, item["value"])
        expected = item["startline"] - 1
    return " ".join(lines)


def _pip_requirements(command: list[str]) -> list[str] | None:
    """The requirement words of a ``pip install`` command, or None when it is not one."""
    words = [w for w in command if "=" not in w or not re.fullmatch(r"[A-Z_]+=.*", w)]
    for start in range(len(words) - 1):
        program = Path(words[start]).name
        if program.startswith("pip") or (program.startswith("python")
                                         and words[start + 1:start + 3] == ["-m", "pip"]):
            rest = words[start + 1:]
            if rest[:2] == ["-m", "pip"]:
                rest = rest[2:]
            if not rest or rest[0] != "install":
                return None
            requirements, skip = [], False
            for word in rest[1:]:
                if skip:
                    skip = False
                elif word in PIP_OPTIONS_WITH_VALUE:
                    skip = True
                elif not word.startswith("-"):
                    requirements.append(word)
            return requirements
    return None


def _is_local_path(requirement: str) -> bool:
    return requirement.startswith((".", "/")) or requirement.endswith(".whl")


# ----------------------------------------------------------------------------------- the rules


def check_base_pinned(stages: list[Stage]) -> list[str]:
    """Every external base image is pinned by a digest or an exact version tag, never `latest`."""
    problems, names = [], set()
    for stage in stages:
        image = stage.parent
        if image in names:
            pass  # an earlier stage of this file
        elif "$" in image:
            problems.append(f"base image '{image}' has an unresolved build argument")
        elif re.search(r"@sha256:[0-9a-f]{64}$", image):
            pass
        else:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag:
                problems.append(f"base image '{image}' has no tag (means latest); pin an exact tag")
            elif not re.match(r"v?\d+\.\d+", tag):  # 12.6.3-base-..., 24.04, 25.01-py3
                problems.append(f"base image '{image}': tag '{tag}' is not an exact version "
                                "(use e.g. 12.6.3-base-ubuntu24.04 or a @sha256 digest)")
        if stage.name:
            names.add(stage.name)
    return problems


def _substitute_args(value: str, stage: Stage) -> str:
    """Replace ${NAME} / $NAME by the default of the stage's ARG NAME (unknown names stay)."""
    defaults: dict[str, str] = {}
    for arg in _of(stage, "ARG"):
        for word in shlex.split(arg["value"]):
            name, _, default = word.partition("=")
            defaults[name] = default
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                  lambda m: defaults.get(m.group(1)) or m.group(0), value)


def check_user(stages: list[Stage]) -> list[str]:
    """The final stage switches to a non-root USER (build-argument defaults substituted), and no
    later USER switches back."""
    users = _of(stages[-1], "USER")
    if not users:
        return ["the final stage has no USER instruction: the image would run as root"]
    value = _substitute_args(users[-1]["value"], stages[-1])
    user = value.split(":")[0]
    if user in {"root", "0"} or "$" in user:
        return [f"the last USER is '{users[-1]['value']}' (= '{value}'): root or unresolved; "
                "end on the non-root user"]
    return []


def check_workdir(stages: list[Stage]) -> list[str]:
    """The final stage's working directory is /workspace."""
    workdirs = _of(stages[-1], "WORKDIR")
    if not workdirs or workdirs[-1]["value"] != "/workspace":
        found = workdirs[-1]["value"] if workdirs else "none"
        return [f"the final WORKDIR is {found}; it must be /workspace"]
    return []


def check_entrypoint(stages: list[Stage]) -> list[str]:
    """The final stage's ENTRYPOINT is ["dra-dali"] in exec (JSON) form."""
    entrypoints = _of(stages[-1], "ENTRYPOINT")
    if not entrypoints:
        return ["the final stage has no ENTRYPOINT; it must be [\"dra-dali\"]"]
    value = entrypoints[-1]["value"]
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return [f"ENTRYPOINT {value} is in shell form; use the exec form [\"dra-dali\"]"]
    if parsed != ["dra-dali"]:
        return [f"ENTRYPOINT is {parsed}; it must be [\"dra-dali\"]"]
    return []


def check_no_remote_add(stages: list[Stage]) -> list[str]:
    """No ADD fetches a remote URL (unverified download into the image)."""
    return [f"line {i['startline'] + 1}: ADD of a remote source '{word}'; download in a RUN "
            "with a checksum, or COPY a file from the context"
            for stage in stages for i in _of(stage, "ADD")
            for word in shlex.split(i["value"])
            if re.match(r"(https?|ftp|git)://|git@", word)]


def check_pip(stages: list[Stage]) -> list[str]:
    """pip installs are pinned with == and leave no cache; so are the specs given to install.sh."""
    problems = []
    for stage in stages:
        for arg in _of(stage, "ARG"):
            for word in shlex.split(arg["value"]):
                name, has_value, value = word.partition("=")
                if name.endswith(("_SPEC", "_SPECS")) and has_value:
                    problems += [f"ARG {name}: '{spec}' is not pinned with =="
                                 for spec in value.split() if "==" not in spec]
        for run in _of(stage, "RUN"):
            env = _stage_env(stage, run["startline"])
            no_cache_env = env.get("PIP_NO_CACHE_DIR") in {"1", "true"}
            for command in _shell_commands(run["value"]):
                runs_installer = any(Path(w).name == "install.sh" for w in command)
                requirements = _pip_requirements(command)
                if requirements is None and not runs_installer:
                    continue
                if not no_cache_env and "--no-cache-dir" not in command:
                    problems.append(f"line {run['startline'] + 1}: '{' '.join(command)}' keeps "
                                    "pip's cache; add --no-cache-dir or ENV PIP_NO_CACHE_DIR=1")
                problems += [f"line {run['startline'] + 1}: pip requirement '{r}' is not pinned "
                             "with ==" for r in requirements or []
                             if not _is_local_path(r) and "==" not in r]
    return problems


def check_apt(stages: list[Stage]) -> list[str]:
    """apt installs are pinned (pkg=version) or documented, skip recommends, and clean the lists."""
    problems = []
    for stage in stages:
        for run in _of(stage, "RUN"):
            commands = _shell_commands(run["value"])
            for command in commands:
                if command[:2] not in (["apt-get", "install"], ["apt", "install"]):
                    continue
                line = f"line {run['startline'] + 1}"
                packages = [w for w in command[2:] if not w.startswith("-")]
                unpinned = [p for p in packages if "=" not in p]
                if unpinned and APT_UNPINNED_NOTE not in _comments_above(stage, run):
                    problems.append(f"{line}: apt packages {unpinned} are neither pinned "
                                    f"(pkg=version) nor documented by a comment above saying "
                                    f"why they are '{APT_UNPINNED_NOTE}'")
                if "--no-install-recommends" not in command:
                    problems.append(f"{line}: apt install without --no-install-recommends")
                if ["rm", "-rf", "/var/lib/apt/lists/*"] not in commands:
                    problems.append(f"{line}: apt install without 'rm -rf /var/lib/apt/lists/*' "
                                    "in the same RUN")
    return problems


def check_no_secrets(stages: list[Stage]) -> list[str]:
    """No ARG or ENV carries a secret: their values end up in the image's history."""
    return [f"line {i['startline'] + 1}: {i['instruction']} {name} looks like a secret; pass "
            "secrets at run time (docker run -e, --secret), never in the image"
            for stage in stages for i in _of(stage, "ARG") + _of(stage, "ENV")
            for name in _env_names(i) if any(w in name.upper() for w in SECRET_WORDS)]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for a context path: the last matching pattern decides; a
    pattern matching a parent folder matches what is inside it; '!' re-includes."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", ""))
               for p in prefixes):
            ignored = not negate
    return ignored


def check_copy_sources(stages: list[Stage], context: Path) -> list[str]:
    """COPY sources exist in the build context and survive .dockerignore; --from names a stage."""
    problems, names = [], set()
    ignore_file = context / ".dockerignore"
    patterns = ([line.strip() for line in ignore_file.read_text().splitlines()
                 if line.strip() and not line.startswith("#")] if ignore_file.exists() else [])
    for stage in stages:
        for copy in _of(stage, "COPY"):
            words = shlex.split(copy["value"])
            options = [w for w in words if w.startswith("--")]
            sources = [w for w in words if not w.startswith("--")][:-1]
            source_stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")),
                                None)
            if source_stage is not None:
                if source_stage not in names:
                    problems.append(f"COPY --from={source_stage}: no earlier stage of that name")
                continue
            for source in sources:
                if not (context / source).exists():
                    problems.append(f"COPY source '{source}' does not exist in the context")
                elif _dockerignored(source, patterns):
                    problems.append(f"COPY source '{source}' is excluded by .dockerignore")
        if stage.name:
            names.add(stage.name)
    return problems


RULES = (check_base_pinned, check_user, check_workdir, check_entrypoint, check_no_remote_add,
         check_pip, check_apt, check_no_secrets)


def problems_of(content: str) -> list[str]:
    """All rule violations of a Dockerfile's text (the context checks are separate)."""
    stages = parse_stages(content)
    if not stages:
        return ["no FROM instruction"]
    return [problem for rule in RULES for problem in rule(stages)]


# ----------------------------------------------------------------------------------- the tests


def test_dockerfile_follows_every_rule():
    content = DOCKERFILE.read_text()
    stages = parse_stages(content)
    problems = problems_of(content) + check_copy_sources(stages, ROOT)
    assert problems == [], "docker/Dockerfile breaks its rules:\n" + "\n".join(problems)
    assert len(stages) >= 2, "expected a multi-stage build (build stage + runtime stage)"


def test_final_image_is_multi_stage_and_copies_only_the_environment():
    stages = parse_stages(DOCKERFILE.read_text())
    final = stages[-1]
    copies = [shlex.split(c["value"]) for c in _of(final, "COPY")]
    assert copies and all(any(w.startswith("--from=") for w in c) for c in copies), (
        f"the final stage should take only built folders from earlier stages, got {copies}")
    final_commands = [c for run in _of(final, "RUN") for c in _shell_commands(run["value"])]
    installs = [c for c in final_commands if _pip_requirements(c) is not None
                or any(Path(w).name == "install.sh" for w in c)]
    assert installs == [], f"the final stage should not install Python packages: {installs}"


def test_every_run_is_valid_shell():
    """RUN lines go to /bin/sh -c; a syntax error would only show at build time."""
    for stage in parse_stages(DOCKERFILE.read_text()):
        for run in _of(stage, "RUN"):
            result = subprocess.run(["sh", "-n", "-c", run["value"]], capture_output=True,
                                    text=True, timeout=30)
            assert result.returncode == 0, (
                f"docker/Dockerfile line {run['startline'] + 1}: {result.stderr}")


GOOD = """\
FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS build
# apt packages are not pinned: the base tag fixes the release.
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv \\
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1
ARG TORCH_SPEC=torch==2.13.0
RUN python3 -m pip install numpy==2.4.6 /src
FROM build
USER dra
WORKDIR /workspace
ENTRYPOINT ["dra-dali"]
"""


def test_minimal_good_dockerfile_passes():
    assert problems_of(GOOD) == []


@pytest.mark.parametrize("old, new, expected", [
    ("nvidia/cuda:12.6.3-base-ubuntu24.04", "nvidia/cuda:latest", "not an exact version"),
    ("nvidia/cuda:12.6.3-base-ubuntu24.04", "nvidia/cuda", "has no tag"),
    ("nvidia/cuda:12.6.3-base-ubuntu24.04", "nvidia/cuda:12-base-ubuntu24.04", "exact version"),
    ("FROM build", "FROM ubuntu:latest", "not an exact version"),
    ("USER dra", "USER root", "root"),
    ("USER dra", "USER dra\nUSER 0:0", "root"),
    ("USER dra\n", "", "no USER"),
    ("USER dra", "ARG UID=0\nUSER ${UID}", "root"),
    ("WORKDIR /workspace", "WORKDIR /app", "/workspace"),
    ('ENTRYPOINT ["dra-dali"]', "ENTRYPOINT dra-dali", "shell form"),
    ('ENTRYPOINT ["dra-dali"]', 'ENTRYPOINT ["python", "-m", "dra_dali"]', "must be"),
    ("FROM build\n", "FROM build\nADD https://example.com/w.tar.gz /w\n", "remote source"),
    ("numpy==2.4.6", "numpy", "not pinned"),
    ("numpy==2.4.6", "numpy>=2", "not pinned"),
    ("torch==2.13.0", "torch", "ARG TORCH_SPEC"),
    ("ENV PIP_NO_CACHE_DIR=1\n", "", "pip's cache"),
    ("# apt packages are not pinned: the base tag fixes the release.\n", "", "neither pinned"),
    ("--no-install-recommends ", "", "--no-install-recommends"),
    (" \\\n && rm -rf /var/lib/apt/lists/*", "", "/var/lib/apt/lists"),
    ("ENV PIP_NO_CACHE_DIR=1", "ENV PIP_NO_CACHE_DIR=1 HF_TOKEN=abc", "secret"),
    ("ARG TORCH_SPEC=torch==2.13.0", "ARG TORCH_SPEC=torch==2.13.0\nARG WANDB_API_KEY",
     "secret"),
    ("ENV PIP_NO_CACHE_DIR=1", "ENV PIP_NO_CACHE_DIR=1\nENV DB_PASSWORD hunter2", "secret"),
])
def test_each_rule_rejects_a_dockerfile_that_breaks_it(old, new, expected):
    assert old in GOOD
    problems = problems_of(GOOD.replace(old, new, 1))
    assert any(expected in p for p in problems), f"expected '{expected}' among {problems}"


def test_pinned_apt_packages_need_no_comment():
    content = GOOD.replace("# apt packages are not pinned: the base tag fixes the release.\n", "")
    content = content.replace("python3-venv", "python3-venv=3.12.3-0ubuntu2")
    assert problems_of(content) == []


def test_copy_sources_checked_against_context_and_dockerignore(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".dockerignore").write_text("*\n!pkg\n")
    stages = parse_stages("FROM a:1.0 AS one\nCOPY pkg /p\nCOPY missing /m\nCOPY notes.txt /n\n"
                          "FROM a:1.0\nCOPY --from=one /p /p\nCOPY --from=nowhere /x /x\n")
    problems = check_copy_sources(stages, tmp_path)
    assert len(problems) == 3, problems
    assert "'missing' does not exist" in problems[0]
    assert "'notes.txt' is excluded by .dockerignore" in problems[1]
    assert "--from=nowhere" in problems[2]


def _install_config(**env: str) -> dict[str, str]:
    result = subprocess.run(["bash", str(INSTALL_SH), "config"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", **env}, timeout=30)
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def test_image_versions_equal_the_versions_ci_installs():
    """The image's torch/torchvision builds (+cu126) are the versions CI tests (CPU build)."""
    ci = _install_config()
    image_args = {}
    for stage in parse_stages(DOCKERFILE.read_text()):
        for arg in _of(stage, "ARG"):
            for word in shlex.split(arg["value"]):
                name, _, value = word.partition("=")
                image_args[name] = value
    image = _install_config(**{k: v for k, v in image_args.items()
                               if k in ci and v})

    def versions(specs: str) -> dict[str, str]:
        pins = dict(spec.split("==") for spec in specs.split())
        return {name: version.split("+")[0] for name, version in pins.items()}

    for key in ("TORCH_SPEC", "MODELS_SPECS", "DALI_SPEC"):
        assert versions(image[key]) == versions(ci[key]), (
            f"{key}: the image installs {image[key]}, CI checks {ci[key]}")
    assert "+cu126" in image["TORCH_SPEC"] and "cu126" in image["TORCH_INDEX_URL"]


def test_install_script_refuses_unpinned_requirements():
    result = subprocess.run(["bash", str(INSTALL_SH), "deps"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "TORCH_SPEC": "torch>=2.1",
                                 "PYTHON": "true"}, timeout=30)
    assert result.returncode != 0
    assert "'torch>=2.1' is not pinned" in result.stderr


def test_constraints_pin_every_line_and_leave_named_pins_to_install_sh():
    names = []
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), (
                f"docker/constraints.txt: '{line}' is not a name==version pin")
            names.append(line.split("==")[0].lower().replace("_", "-"))
    assert len(names) == len(set(names)), "docker/constraints.txt names a package twice"
    config = _install_config()
    named = {spec.split("==")[0] for key in ("TORCH_SPEC", "DALI_SPEC", "MODELS_SPECS")
             for spec in config[key].split()}
    assert not named & set(names), (
        f"{sorted(named & set(names))} are pinned both in install.sh and docker/constraints.txt")
