"""Compile a policy into files: the serialised DALI pipeline, a graph summary and a preview grid.

This is the library behind ``dra-dali compile``. The compiled pipeline is the training pipeline of
:mod:`dra_dali.dali.pipelines` (reader over the data, decode + crop, flip, the policy, normalise),
serialised with :meth:`nvidia.dali.Pipeline.serialize`, so anyone with only DALI installed can
run it::

    from nvidia.dali import Pipeline
    pipe = Pipeline.deserialize(filename="out/pipeline.dali")   # device_id=..., batch_size=...
    pipe.build(); images, labels = pipe.run()

Example:
    >>> from dra_dali import Policy
    >>> result = compile_policy(Policy.preset("ta"), "out", recipe="demo")   # doctest: +SKIP
    >>> result.pipeline_path                                                  # doctest: +SKIP
    PosixPath('out/pipeline.dali')
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dra_dali.dali.draws import NEGLIGIBLE_PROBABILITY
from dra_dali.dali.pipelines import (
    OUTPUT_NAMES,
    PipelineRecipe,
    build_preview_pipeline,
    build_train_pipeline,
    load_recipe,
    resolution_warning,
)
from dra_dali.data import ImageList, check_headers, embedded_dataset
from dra_dali.ops import OPS
from dra_dali.policy import Policy
from dra_dali.viz import describe

__all__ = ["CompileResult", "compile_policy", "graph_operators", "placement_problems",
           "render_preview"]

# Operators that read only the shape of a GPU tensor and legitimately run on the CPU.
_METADATA_OPS = {"_Shape", "Shapes"}


@dataclass
class CompileResult:
    """What :func:`compile_policy` wrote and found.

    Attributes:
        out: the output folder.
        summary_path: ``summary.txt``.
        config_path: ``config.yaml`` (the resolved settings).
        policy_path: ``policy.yaml`` (a copy of the compiled policy).
        pipeline_path: ``pipeline.dali``, or ``None`` when it could not be serialised.
        preview_path: ``preview.png``, or ``None`` when no preview could be rendered.
        notes: sentences for the user (serialisation needs CUDA, preview rendered on CPU, ...).
        warnings: warnings (e.g. the policy's resolution differs from the crop).
        operators: ``(operator schema, device) -> count`` of the compiled graph.
    """

    out: Path
    summary_path: Path
    config_path: Path
    policy_path: Path
    pipeline_path: Path | None
    preview_path: Path | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    operators: dict[tuple[str, str], int] = field(default_factory=dict)


def graph_operators(pipe) -> list[tuple[str, str, str, list[str]]]:
    """The operators of a DALI pipeline graph, constructed without building (no CUDA needed).

    Returns:
        ``(instance name, operator schema, device, input devices)`` per operator, in graph order.
    """
    if getattr(pipe, "_ops", None) is None:
        pipe._build_graph()  # the Python graph only; needs no CUDA, unlike build()/serialize()
    return [(op.name, op._op.schema_name, op._op.device, [i.device for i in op.inputs])
            for op in pipe._ops]


def placement_problems(pipe, device: str) -> list[str]:
    """Device-placement check of a pipeline built for ``device`` (``cpu`` or ``gpu``).

    On ``gpu``: the decoder must be ``mixed`` and no operator may take a GPU input on the CPU
    (shape queries excepted), i.e. the images never come back to the host. On ``cpu``: every
    operator runs on the CPU.

    Returns:
        One sentence per problem (empty when the placement is right).
    """
    ops = graph_operators(pipe)
    problems = []
    if device == "cpu":
        problems += [f"{name} ({schema}) runs on {dev}, expected cpu"
                     for name, schema, dev, _ in ops if dev != "cpu"]
    else:
        decoders = [(n, s, d) for n, s, d, _ in ops if s.startswith("decoders__")]
        problems += [f"decoder {n} ({s}) runs on {d}, expected mixed"
                     for n, s, d in decoders if d != "mixed"]
        if not decoders:
            problems.append("no image decoder in the graph")
        problems += [f"{name} ({schema}) takes GPU data on the CPU"
                     for name, schema, dev, inputs in ops
                     if dev == "cpu" and "gpu" in inputs and schema not in _METADATA_OPS]
    return problems


def render_preview(pipe, path: Path, images: int, samples: int, cell: int = 96) -> Path:
    """Run a :func:`~dra_dali.dali.pipelines.build_preview_pipeline` pipeline once and save the
    grid: one row per source image, the original first, then ``samples`` augmentations.

    Returns:
        ``path``.
    """
    from PIL import Image

    pipe.build()
    originals, augmented = pipe.run()
    if hasattr(originals, "as_cpu"):
        originals, augmented = originals.as_cpu(), augmented.as_cpu()
    rows = len(originals) // samples
    grid = Image.new("RGB", ((samples + 1) * cell + 8, rows * cell), (255, 255, 255))
    for r in range(rows):
        row = [np.array(originals[r * samples])] + [np.array(augmented[r * samples + k])
                                                     for k in range(samples)]
        for c, img in enumerate(row):
            tile = Image.fromarray(img)
            tile = tile.resize((cell, cell),
                               Image.NEAREST if tile.width <= cell else Image.BILINEAR)
            grid.paste(tile, (c * cell + (8 if c else 0), r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _policy_lines(policy: Policy) -> list[str]:
    if policy.format != "dra-policy/1":
        # gates, per-operator apply probabilities, level bins, sub-policies: the `show` tables
        return describe(policy).splitlines()
    lo, hi = policy.apply_prob
    p_apply = (lo + hi) / 2
    lines = [f"apply probability per layer: p ~ U({lo:g}, {hi:g}), mean {p_apply:.3f}",
             f"expected operators applied per image: {policy.depth * p_apply:.2f} of "
             f"{policy.depth} layers; images left unchanged by every layer: "
             f"{(1 - p_apply) ** policy.depth:.1%}"]
    for j, layer in enumerate(policy.layers):
        probs = layer.probabilities
        lines.append("")
        lines.append(f"layer {j + 1} ({layer.dist} magnitudes)")
        lines.append(f"  {'operator':<14} {'prob':>7} {'applied':>8} {'mean':>6} {'std':>6}")
        for i in np.argsort(-probs, kind="stable"):
            name = policy.ops[i]
            if probs[i] < NEGLIGIBLE_PROBABILITY:
                lines.append(f"  {name:<14} {probs[i]:7.4f} {'-':>8}   (no branch: probability 0)")
                continue
            if OPS[name].magnitude_free:
                mag = f"{'-':>6} {'-':>6}"
            elif layer.dist == "uniform":
                mag = f"U(0, {policy.scale:g})".rjust(13)
            else:
                mag = f"{layer.mean[i]:6.3f} {layer.std[i]:6.3f}"
            lines.append(f"  {name:<14} {probs[i]:7.4f} {probs[i] * p_apply:8.4f} {mag}")
    return lines


def _compile_schedule(policy: Policy, out: Path, **options: Any) -> CompileResult:
    """One DALI graph holds one policy: a scheduled policy compiles into one folder per schedule
    entry (``epoch-005/pipeline.dali``, ...), and ``summary.txt`` says which folder serves which
    epochs. ``DALILoader`` and ``dra-dali train`` switch between them at the boundaries."""
    entries = policy.schedule
    results = []
    lines = [f"dra-dali compiled schedule: {len(entries)} pipelines, one per schedule entry; "
             f"the active policy changes at epochs {list(policy.schedule_boundaries)}"]
    for i, entry in enumerate(entries):
        folder = out / f"epoch-{entry.start_epoch:03d}"
        results.append(compile_policy(entry.policy, folder, **options))
        end = f"{entries[i + 1].start_epoch - 1}" if i + 1 < len(entries) else "on"
        lines.append(f"  epochs {entry.start_epoch}-{end}: {folder.name}/ (pipeline.dali, "
                     f"summary.txt, preview.png)")
    policy.save(out / "policy.yaml")
    first = results[0]
    summary = out / "summary.txt"
    summary.write_text("\n".join(lines) + "\n\n== policy ==\n" + describe(policy) + "\n")
    return CompileResult(out=out, summary_path=summary, config_path=first.config_path,
                         policy_path=out / "policy.yaml", pipeline_path=first.pipeline_path,
                         preview_path=first.preview_path, notes=first.notes,
                         warnings=first.warnings, operators=first.operators)


def _graph_lines(ops, counts: dict[tuple[str, str], int], problems: list[str],
                 device: str) -> list[str]:
    lines = [f"{len(ops)} DALI operators ({sum(1 for o in ops if o[2] != 'cpu')} on GPU/mixed, "
             f"{sum(1 for o in ops if o[2] == 'cpu')} on CPU: reader, random draws, per-sample "
             f"parameters)", f"  {'operator':<28} {'device':<6} {'count':>5}"]
    for (schema, dev), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {schema:<28} {dev:<6} {n:>5}")
    lines.append("")
    if problems:
        lines.append(f"device placement for {device}: PROBLEMS")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append(f"device placement for {device}: ok ("
                     + ("decoder mixed, images stay on the GPU" if device == "gpu"
                        else "everything on the CPU") + ")")
    return lines


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def compile_policy(policy: Policy, out: str | Path, *, device: str = "cpu",
                   data: "str | Path | ImageList | None" = None,
                   recipe: "str | Path | PipelineRecipe" = "imagenet",
                   batch_size: int | None = None, seed: int = 0, policy_source: str | None = None,
                   preview_images: int = 6, preview_samples: int = 7) -> CompileResult:
    """Compile ``policy`` into a training pipeline and write it with a summary and a preview.

    Writes to ``out``: ``pipeline.dali`` (serialised pipeline), ``summary.txt`` (operators,
    devices, placement check, per-layer probabilities, expected applied fractions),
    ``preview.png`` (originals and augmentations rendered by DALI with the compiled policy),
    ``config.yaml`` (resolved settings) and ``policy.yaml`` (the policy).

    On ``device="gpu"`` without CUDA the graph is still constructed and its placement checked;
    ``pipeline.dali`` is not written (serialising a GPU pipeline needs CUDA) and the preview is
    rendered by the same graph on the CPU; ``result.notes`` says so.

    Args:
        policy: the policy.
        out: output folder (created).
        device: ``cpu`` or ``gpu``.
        data: images the pipeline reads and the preview shows (image folder or file list);
            default: the embedded demo dataset's training folder.
        recipe: pipeline recipe (name, path or object).
        batch_size: batch size of the serialised pipeline (default: the recipe's).
        seed: pipeline seed.
        policy_source: where the policy came from, for the config (e.g. its path).
        preview_images: source images in the preview.
        preview_samples: augmentations per source image in the preview.

    Returns:
        A :class:`CompileResult`.

    Raises:
        DataError: the data cannot be scanned or holds files DALI cannot decode (named; see
            :func:`~dra_dali.data.check_headers`).
        RecipeError: the recipe is invalid.
        ValueError: an unknown device.
    """
    import nvidia.dali

    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if policy.kind == "schedule":
        return _compile_schedule(policy, out, device=device, data=data, recipe=recipe,
                                 batch_size=batch_size, seed=seed, policy_source=policy_source,
                                 preview_images=preview_images, preview_samples=preview_samples)
    recipe = load_recipe(recipe)
    images = check_headers(data if data is not None else embedded_dataset().train)
    result = CompileResult(out=out, summary_path=out / "summary.txt",
                           config_path=out / "config.yaml", policy_path=out / "policy.yaml",
                           pipeline_path=None, preview_path=None)
    mismatch = resolution_warning(policy, recipe)
    if mismatch:
        result.warnings.append(mismatch)

    # DALI's own operators only: the fused CPU kernels (numba) cannot be serialised
    pipe = build_train_pipeline(images, policy, recipe, batch_size=batch_size, device=device,
                                seed=seed, warn=False, cpu_kernels="dali")
    ops = graph_operators(pipe)
    problems = placement_problems(pipe, device)
    result.operators = dict(Counter((schema, dev) for _, schema, dev, _ in ops))
    if device == "gpu" and not _cuda_available():
        result.notes.append("pipeline.dali was not written: serialising a GPU pipeline needs "
                            "CUDA and a GPU, and this machine has none. The graph was "
                            "constructed and its device placement checked (see summary.txt); "
                            "run the same command on a GPU node, or use --device cpu here.")
    else:
        pipe.serialize(filename=str(out / "pipeline.dali"))
        result.pipeline_path = out / "pipeline.dali"
    del pipe

    preview_device = device
    if device == "gpu" and result.pipeline_path is None:
        preview_device = "cpu"
        result.notes.append("preview.png was rendered by the same graph on the CPU (no CUDA).")
    preview = build_preview_pipeline(images, policy, recipe, images=preview_images,
                                     samples=preview_samples, device=preview_device, seed=seed)
    result.preview_path = render_preview(preview, out / "preview.png", images=preview_images,
                                         samples=preview_samples)
    del preview

    policy.save(result.policy_path)
    config: dict[str, Any] = {
        "policy": policy_source or str(result.policy_path),
        "policy_sha256": policy.sha256(),
        "device": device,
        "data": str(images.source),
        "images": len(images),
        "classes": len(images.classes),
        "batch_size": batch_size or recipe.batch_size,
        "seed": seed,
        "outputs": list(OUTPUT_NAMES),
        "recipe": recipe.to_dict(),
        "pipeline": result.pipeline_path.name if result.pipeline_path else None,
        "dali_version": nvidia.dali.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    lines = [f"dra-dali compiled pipeline ({device})",
             f"policy: {config['policy']} (sha256 {config['policy_sha256'][:12]}), "
             f"{policy.depth} layers, {len(policy.ops)} operators, resolution "
             f"{policy.resolution}, scale {policy.scale:g}",
             f"recipe: {recipe.name}: {recipe.crop} crop to {recipe.resolution} px"
             + (f", crop_scale {list(recipe.crop_scale)}, crop_ratio "
                f"{[round(r, 3) for r in recipe.crop_ratio]}"
                if recipe.crop == "random_resized" else
                f", pad {recipe.pad}" if recipe.crop == "pad" else "")
             + f", flip {'on' if recipe.flip else 'off'}"
             + (f", cutout {recipe.cutout} px" if recipe.cutout else "")
             + f", normalise mean {list(recipe.mean)} std {list(recipe.std)} -> NCHW "
               f"{recipe.dtype}",
             f"data: {images.source} ({len(images)} images, {len(images.classes)} classes; the "
             f"serialised reader holds these absolute paths)",
             f"outputs: images (N x 3 x {recipe.resolution} x {recipe.resolution}), labels "
             f"(N x 1 int32); "
             f"batch size {config['batch_size']}, seed {seed}, DALI {nvidia.dali.__version__}"]
    lines += [f"WARNING: {w}" for w in result.warnings]
    lines += ["", "== policy =="] + _policy_lines(policy)
    lines += ["", "== graph =="] + _graph_lines(ops, result.operators, problems, device)
    lines += ["", "== files =="]
    lines.append("pipeline.dali: " + ("Pipeline.deserialize(filename='pipeline.dali') needs "
                                      "only DALI" if result.pipeline_path else
                                      "not written (serialisation needs CUDA)"))
    lines.append("preview.png: rows = source images; first column the original crop, then "
                 f"{preview_samples} draws of the policy" + (
                     " (rendered on the CPU)" if preview_device != device else ""))
    lines += [f"NOTE: {n}" for n in result.notes]
    result.summary_path.write_text("\n".join(lines) + "\n")
    if problems:
        raise RuntimeError(f"device placement check failed for {device}: "
                           + "; ".join(problems) + f" (see {result.summary_path})")
    return result
