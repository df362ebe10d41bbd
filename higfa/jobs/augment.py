"""`higfa augment`: HiGFA over a whole dataset with diffusers — resumable, sharded, byte-reproducible.

The job is a deterministic list of items (image × variant, images sorted by id). Item (i, v) gets
seed = H(global seed, image id, v): its noise, contour transform and ancestral noise come from that
seed alone, so any output can be regenerated on its own and the bytes do not depend on how many
processes share the work (`higfa.jobs.distributed`: torchrun, SLURM arrays, --shard). With
--batch-size B the list is cut into fixed groups of B consecutive items, sampled together; the
groups do not depend on the world size either (the bytes do depend on B, which is part of the run).

Outputs (`higfa.jobs.records`): OUT/images/<label>/<name>_v<k>.png (an ImageFolder), optional
OUT/traces/..., OUT/manifest.jsonl, run.json (the run's settings), summary.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np

from ..backends.components import BUILTIN
from ..classifier import normalise_name
from . import dataset, records
from .distributed import ProcessGroup, Ranks, detect_ranks, pick_device, shard

DEFAULT_PROMPT = "a photo of a {class}, a type of {super}"
PROMPT_FIELDS = {"class", "super", "label"}
STOP_AFTER_ENV = "HIGFA_AUGMENT_STOP_AFTER"  # test hook: stop this process after N generated items
STOP_SIGNAL_ENV = "HIGFA_AUGMENT_STOP_SIGNAL"  # ... with this signal (KILL default, or INT for Ctrl-C)


# ---------------------------------------------------------------------------- the item list
@dataclass(frozen=True)
class Source:
    """One input image."""

    id: str  # stable id: path relative to the dataset root (or as written in the manifest)
    path: Path
    label: str  # folder name / manifest label
    class_name: str  # what the prompt says
    target: int | None  # classifier class index
    name: str  # output file stem, unique within the label


@dataclass(frozen=True)
class Item:
    source: Source
    variant: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.source.id}#{self.variant}"

    @property
    def output(self) -> str:
        return f"images/{self.source.label}/{self.source.name}_v{self.variant}.png"

    @property
    def trace(self) -> str:
        return f"traces/{self.source.label}/{self.source.name}_v{self.variant}.json"


def item_seed(global_seed: int, image_id: str, variant: int) -> int:
    """A 63-bit seed from (global seed, image id, variant) only."""
    digest = hashlib.sha256(f"higfa-augment|{global_seed}|{image_id}|{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def pretty_label(label: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross' (CUB-style folder names)."""
    name = re.sub(r"^\d+[._\-\s]+", "", label)
    return " ".join(name.replace("_", " ").split()) or label


def read_class_names(path: str | Path, labels: Sequence[str]) -> dict[str, str]:
    """label -> prompt name from a JSON object {label: name}, a JSON list / text file of names in
    sorted-label order, or a text/CSV file of `label<TAB or ,>name` lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file not found: {path}. Give a JSON object {{label: name}} or a text "
                                "file with one 'label<TAB>name' per line")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return _names_in_order(data, labels, path)
        if not isinstance(data, dict):
            raise ValueError(f"class-names file {path}: expected a JSON object {{label: name}} or a list of names")
        return {str(k): str(v) for k, v in data.items()}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if all(("\t" in ln or "," in ln) for ln in lines):
        return {a.strip(): b.strip() for a, b in (re.split(r"[\t,]", ln, maxsplit=1) for ln in lines)}
    return _names_in_order(lines, labels, path)


def _names_in_order(names: list, labels: Sequence[str], path: Path) -> dict[str, str]:
    if len(names) != len(labels):
        raise ValueError(f"class-names file {path} lists {len(names)} names for {len(labels)} classes: give one per "
                         "class in sorted label order, or 'label<TAB>name' lines")
    return {lab: str(n) for lab, n in zip(sorted(labels), names)}


def read_sources(data: str | Path, limit: int | None = None) -> tuple[list[dataset.SourceImage], list[str], list[str]]:
    """(images sorted by id, labels, empty class folders) of an ImageFolder or a manifest."""
    data = Path(data).expanduser()
    if data.is_dir():
        found, classes = dataset.scan_image_folder(data)
        empty = dataset.empty_classes(data, found, classes)
    elif data.is_file():
        found = dataset.read_manifest(data)
        classes, empty = sorted({i.label for i in found}), []
    else:
        raise FileNotFoundError(f"--data {data} not found: pass an ImageFolder (one sub-folder per class) or a "
                                "CSV/JSON manifest with path,label")
    found = sorted({i.id: i for i in found}.values(), key=lambda i: i.id)
    if limit is not None:
        found = found[:limit]
    if not found:
        raise ValueError(f"--data {data} has no images ({', '.join(dataset.IMAGE_EXTENSIONS)}): nothing to augment")
    return found, classes, empty


def check_prompt(template: str) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = fields - PROMPT_FIELDS
    if unknown:
        raise ValueError(f"--prompt {template!r} uses {sorted(unknown)}: the placeholders are {{class}} (class name), "
                         "{super} (--super, e.g. 'bird') and {label} (folder name)")


def make_sources(found: Sequence[dataset.SourceImage], names: dict[str, str], classifier=None) -> list[Source]:
    """Attach prompt names, classifier targets and unique output names; clear errors for labels the
    classifier does not know."""
    targets: dict[str, int | None] = {}
    unknown = []
    for label in sorted({i.label for i in found}):
        if classifier is None:
            targets[label] = None
            continue
        for key in (label, pretty_label(label), names.get(label, label)):
            try:
                targets[label] = classifier.resolve(key)
                break
            except ValueError:
                continue
        else:
            unknown.append(label)
    if unknown:
        raise ValueError(f"labels {unknown} are not classes of the classifier (it knows {classifier.class_names[:8]}"
                         f"{' ...' if classifier.num_classes > 8 else ''}). Map them with --class-names (the folder "
                         "name, its readable form and its class name are tried), use the classifier trained on this "
                         "dataset, or choose --preset cfg/contour (no classifier)")
    sources, seen = [], {}
    for it in found:
        parts = [p for p in PurePosixPath(it.id).with_suffix("").parts if p not in ("/", "..", ".")]
        if len(parts) > 1 and parts[0] == it.label:
            parts = parts[1:]
        name = "__".join(re.sub(r"[^\w.\-]+", "_", p) for p in parts) or "image"
        clash = seen.get((it.label, name))
        if clash is not None:
            raise ValueError(f"inputs {clash!r} and {it.id!r} would both write {it.label}/{name}_v*.png: rename one "
                             "(they differ only in extension or punctuation)")
        seen[(it.label, name)] = it.id
        sources.append(Source(it.id, it.path, it.label, names.get(it.label, pretty_label(it.label)),
                              targets[it.label], name))
    return sources


def make_items(sources: Sequence[Source], variants: int, seed: int) -> list[Item]:
    if variants < 1:
        raise ValueError(f"--variants {variants}: need at least 1 synthetic image per real image")
    return [Item(s, v, item_seed(seed, s.id, v)) for s in sources for v in range(variants)]


def make_groups(items: Sequence[Item], batch_size: int) -> list[list[Item]]:
    """Fixed groups of consecutive items: they depend on the item list and B, never on the world size."""
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


# ---------------------------------------------------------------------------- generation
class SourceError(Exception):
    """An input image could not be used (missing, unreadable, corrupt)."""


def square_image(path: Path, size: int) -> np.ndarray:
    """Load, resize the short side to `size` and centre-crop: HxWx3 uint8 with H = W = size."""
    import cv2

    try:
        rgb = dataset.load_image(path)
    except ValueError as e:
        raise SourceError(str(e)) from e
    h, w = rgb.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(rgb[y:y + size, x:x + size])


class ItemSampler:
    """Runs HiGFA for groups of items with loaded components (one per process)."""

    def __init__(self, components, schedule, classifier, *, size: int, steps: int, eta: float, prompt: str,
                 negative_prompt: str, super_name: str, edges, transform, device, guidance_vae=None):
        import torch

        from ..backends.denoiser import decoder_name, vae_decode

        self.c, self.schedule, self.classifier = components, schedule, classifier
        self.size, self.steps, self.eta = size, steps, eta
        self.prompt, self.super_name = prompt, super_name
        self.edges, self.transform, self.device = edges, transform, device
        self.decode = vae_decode(components.vae)
        # The classifier path may decode with a cheaper decoder (--guidance-vae); final images use the VAE.
        self.guidance_decode = vae_decode(guidance_vae) if guidance_vae is not None else self.decode
        self.guidance_name = (decoder_name(guidance_vae, "guidance_vae") if guidance_vae is not None
                              else decoder_name(components.vae))
        self.uses_contour = components.controlnet is not None and schedule.uses_contour
        self._prompts: dict[str, Any] = {}
        self.uncond = self._embed(negative_prompt)
        self._image_cache: tuple[str, Any] | None = None
        self.latent_size = size // components.vae_scale
        self.torch = torch

    def prompt_for(self, source: Source) -> str:
        return self.prompt.format(**{"class": source.class_name, "super": self.super_name, "label": source.label})

    def _embed(self, text: str):
        if text not in self._prompts:
            self._prompts[text] = self.c.encode_prompts([text])
        return self._prompts[text]

    def load(self, source: Source) -> np.ndarray:
        """The square source image (cached: consecutive items often share it). Raises SourceError."""
        if self._image_cache is None or self._image_cache[0] != source.id:
            self._image_cache = (source.id, square_image(source.path, self.size))
        return self._image_cache[1]

    def contour(self, item: Item) -> np.ndarray:
        """The transformed contour (HxWx3 float32 in [0,1]), seeded by the item alone."""
        rgb = self.load(item.source).astype(np.float32) / 255.0
        e = self.edges.edges(rgb)
        if self.transform.amount == 0:
            return e
        return self.transform.sample(self.size, self.size, (item.seed, 1)).contour(e)

    def run(self, group: Sequence[Item]) -> list[dict[str, Any]]:
        """Sample a group together: per item the image (HxWx3 uint8), its trace and confidences."""
        torch = self.torch
        from ..backends.denoiser import sample_with_scheduler
        from ..guide import Guide

        gens = [torch.Generator("cpu").manual_seed(it.seed) for it in group]
        noise = torch.cat([torch.randn(1, self.c.latent_channels, self.latent_size, self.latent_size, generator=g)
                           for g in gens]).to(self.device)
        hint = None
        if self.uses_contour:
            hint = torch.from_numpy(np.stack([self.contour(it) for it in group])).permute(0, 3, 1, 2).to(self.device)
        cond = torch.cat([self._embed(self.prompt_for(it.source)) for it in group])
        targets = [it.source.target for it in group]
        use_cls = self.classifier is not None and (self.schedule.classifier_active(1)
                                                   or self.schedule.classifier_active(2))
        guide = Guide(self.schedule, self.classifier if use_cls else None, self.guidance_decode if use_cls else None,
                      targets if use_cls else None, self.classifier.class_names if use_cls else None,
                      self.guidance_name)
        result = sample_with_scheduler(self.c.unet, self.c.scheduler, noise, guide,
                                       {"cond": cond, "uncond": self.uncond}, steps=self.steps,
                                       controlnet=self.c.controlnet if self.uses_contour else None, contour=hint,
                                       eta=self.eta, generator=gens if len(gens) > 1 else gens[0])
        with torch.no_grad():
            images = self.decode(result.latent).clamp(0, 1)
            images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            conf = [None] * len(group)
            if self.classifier is not None:
                x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).to(self.device)
                p = torch.softmax(self.classifier(x).float(), -1)
                conf = [float(p[b, t]) for b, t in enumerate(targets)]
        traces = result.trace.split(len(group))
        return [{"image": images[b], "trace": traces[b], "confidence": conf[b]} for b in range(len(group))]


def trace_counts(trace) -> tuple[int, int]:
    """(classifier-measured steps, of which the backward pass was gated) for a one-sample trace."""
    measured = [s for s in trace.steps if s.confidence is not None]
    return len(measured), sum(bool(s.gated[0]) for s in measured)


def encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a PNG")
    return buf.tobytes()


# ---------------------------------------------------------------------------- the job
def build_schedule(args):
    from ..schedule import Schedule

    if args.schedule:
        p = Path(args.schedule)
        text = p.read_text() if p.is_file() else args.schedule
        if not p.is_file() and not text.lstrip().startswith("{"):
            raise FileNotFoundError(f"--schedule {args.schedule}: no such file (pass a schedule JSON file or inline JSON)")
        return Schedule.from_json(text)
    return Schedule.from_preset(args.preset)


def fingerprint(args, schedule, components, size: int, names: dict[str, str]) -> dict[str, Any]:
    """Everything that decides an output's bytes (and which outputs exist). Not in it: the input
    list, --variants and --limit (they add or leave out items; existing outputs stay valid)."""
    return {"model": components.source, "classifier": str(Path(args.classifier).resolve()) if args.classifier else None,
            "scheduler": [args.scheduler, {k: v for k, v in components.scheduler.config.items() if not k.startswith("_")}], "steps": args.steps, "eta": args.eta,
            "size": size, "seed": args.seed, "schedule": schedule.to_dict(), "prompt": args.prompt,
            "negative_prompt": args.negative_prompt, "super": args.super, "class_names": names,
            "edges": edge_detector(args).__dict__, "contour": contour_transform(args).to_dict(),
            "batch_size": args.batch_size, "dtype": args.dtype, "vae_dtype": args.vae_dtype,
            "min_confidence": args.min_confidence, "filter": args.filter if args.min_confidence is not None else None}


def edge_detector(args):
    from ..contour import EdgeDetector

    return EdgeDetector(args.edges, args.canny_low, args.canny_high, args.edge_blur, args.auto_canny)


def contour_transform(args):
    from ..contour import ContourTransform

    return ContourTransform(amount=args.contour_amount)


def model_prompts(model: str) -> tuple[str, dict[str, str]] | None:
    """(template, {normalised class name: prompt name}) of a model folder that ships a world.json
    (the built-in world: its text model knows family names only, so a species is prompted by its family)."""
    from ..backends.components import builtin_model_path

    try:
        folder = builtin_model_path() if model == BUILTIN else Path(model)
        info = json.loads((folder / "world.json").read_text())["world"]
        template = info["prompt_template"].replace("{family}", "{class}")
        return template, {normalise_name(c): f for c, f in zip(info["class_names"], info["species_family"])}
    except (OSError, KeyError, TypeError, ValueError):
        return None


def default_builtin_classifier() -> str | None:
    """The built-in world's guidance classifier, shipped beside its diffusers folder."""
    from ..backends.components import builtin_model_path

    path = builtin_model_path() / "guidance.safetensors"
    return str(path) if path.is_file() else None


def load_guidance_decoder(args, device, dtype):
    """(module, source) of --guidance-vae; for --model builtin without it, the world's shipped tiny decoder
    when `GUIDANCE_DEFAULT` says so (docs/speed.md); None: the VAE guides."""
    from ..backends.components import builtin_model_path
    from ..backends.denoiser import load_guidance_vae
    from ..world.tiny_decoder import FOLDER, GUIDANCE_DEFAULT

    choice = args.guidance_vae
    if (choice is None and args.model == BUILTIN and GUIDANCE_DEFAULT == "tiny"
            and (builtin_model_path() / FOLDER).is_dir()):
        choice = str(builtin_model_path() / FOLDER)
    if choice is None or choice == "none":
        return None
    return load_guidance_vae(choice, device, dtype), str(Path(choice).resolve())


def run(args: argparse.Namespace) -> int:
    import torch

    from ..classifier import load_classifier
    from ..backends.components import load_components, parse_dtype

    info = detect_ranks(shard=args.shard)
    out = Path(args.out).expanduser()
    world_text = model_prompts(args.model)
    if args.prompt is None:  # a model that ships its own prompts (the built-in world) uses them
        args.prompt = world_text[0] if world_text else DEFAULT_PROMPT
    check_prompt(args.prompt)
    schedule = build_schedule(args)
    if args.model == BUILTIN and not args.classifier:
        args.classifier = default_builtin_classifier()
    if args.min_confidence is not None and not args.classifier:
        raise ValueError("--min-confidence needs --classifier (the confidence is the classifier's)")
    if schedule.uses_classifier and not args.classifier:
        raise ValueError(f"preset/schedule '{schedule.preset}' uses classifier guidance: pass --classifier "
                         "PATH.safetensors (timm weights + .json sidecar), or choose --preset cfg or contour")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = pick_device(args.device, info)
    dtype, vae_dtype = parse_dtype(args.dtype), parse_dtype(args.vae_dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")

    # Inputs first (cheap), so bad data fails before any model is loaded.
    found, labels, empty = read_sources(args.data, args.limit)
    names = {lab: pretty_label(lab) for lab in labels}
    if world_text and not args.class_names:
        for lab in labels:
            for key in (normalise_name(lab), normalise_name(pretty_label(lab))):
                if key in world_text[1]:
                    names[lab] = world_text[1][key]
                    break
    if args.class_names:
        given = read_class_names(args.class_names, labels)
        missing = sorted(set(i.label for i in found) - set(given))
        if missing:
            raise ValueError(f"--class-names {args.class_names} has no name for labels {missing[:8]}: add them")
        names.update(given)
    classifier = load_classifier(args.classifier, device) if args.classifier else None
    sources = make_sources(found, names, classifier)
    items = make_items(sources, args.variants, args.seed)

    components = load_components(args.model, controlnet=args.controlnet, config=args.config,
                                 controlnet_config=args.controlnet_config, scheduler=args.scheduler,
                                 scheduler_options=json.loads(args.scheduler_options) if args.scheduler_options else None,
                                 need_controlnet=schedule.contour_strength > 0 or schedule.contour_lowconf > 0
                                 or schedule.contour_highconf > 0)
    components.to(device, dtype, vae_dtype)
    size = args.size or components.default_size
    multiple = components.vae_scale * 2 ** (len(components.unet.config.block_out_channels) - 1)
    if size % multiple:
        raise ValueError(f"--size {size}: must be a multiple of {multiple} for this model")

    fp = fingerprint(args, schedule, components, size, {s.label: s.class_name for s in sources})
    guidance_vae = load_guidance_decoder(args, device, vae_dtype) if schedule.uses_classifier else None
    if guidance_vae is not None:  # runs without one keep their fingerprint (and their outputs) unchanged
        fp["guidance_vae"] = guidance_vae[1]
    run_hash = records.check_run(out, fp, args.overwrite)
    records.write_json(out / records.PLAN_FILE, {"run": run_hash, "items": [it.key for it in items],
                                                 "empty_classes": empty})
    group = ProcessGroup(info)
    mine = shard(make_groups(items, args.batch_size), info)
    done = records.finished_keys(out, run_hash)
    todo = [g for g in mine if any(it.key not in done for it in g)]
    stats = {"generated": 0, "dropped": 0, "below": 0, "already": sum(it.key in done for g in mine for it in g),
             "failed": {}, "seconds": 0.0, "conf": [], "measured": 0, "gated": 0, "rank": info.rank}
    say = _printer(args.quiet)
    if info.is_main:
        say(f"higfa augment: {len(items)} items ({len(sources)} images x {args.variants} variants, "
            f"{len(set(s.label for s in sources))} classes) -> {out}; {info.world_size} process(es) ({info.launcher}), "
            f"device {device}, run {run_hash}")
        for c in empty:
            say(f"  warning: class folder '{c}' has no images; it gets no synthetic images")
        say(f"  prompt, e.g.: {args.prompt.format(**{'class': sources[0].class_name, 'super': args.super, 'label': sources[0].label})!r}")
    gen = ItemSampler(components, schedule, classifier, size=size, steps=args.steps, eta=args.eta, prompt=args.prompt,
                    negative_prompt=args.negative_prompt, super_name=args.super, edges=edge_detector(args),
                    transform=contour_transform(args), device=device,
                    guidance_vae=None if guidance_vae is None else guidance_vae[0])
    writer = records.PartWriter(out, info.rank, info.world_size)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    t_start = time.perf_counter()
    try:
        all_bar = _loop(gen, todo, done, out, writer, stats, args, info, run_hash, stop_after)
    except KeyboardInterrupt:
        writer.close()
        if info.world_size == 1:
            records.merge(out)  # the manifest lists everything finished so far
        raise
    finally:
        writer.close()
        stats["seconds"] = time.perf_counter() - t_start
    return _finish(out, info, group, stats, say, all_bar)


def _printer(quiet: bool):
    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return say


def _loop(gen: ItemSampler, todo, done, out: Path, writer, stats, args, info: Ranks, run_hash: str,
          stop_after: int):
    from tqdm import tqdm

    total = sum(len(g) for g in todo)
    bar = tqdm(total=total, desc=f"rank {info.rank}/{info.world_size}", position=info.rank if info.world_size > 1 else 0,
               disable=args.quiet or args.no_progress, unit="img", dynamic_ncols=True, leave=True)
    all_bar = None
    if info.is_main and info.world_size > 1 and not (args.quiet or args.no_progress):
        plan_total = len(json.loads((out / records.PLAN_FILE).read_text())["items"])
        all_bar = tqdm(total=plan_total, desc="all ranks", position=info.world_size, unit="img", dynamic_ncols=True)
    last_count = 0.0
    for group in todo:
        ready, failed = [], []
        for it in group:  # an unreadable input fails its items, not the group's other items
            try:
                gen.load(it.source)
                ready.append(it)
            except SourceError as e:
                failed.append((it, str(e)))
        for it, err in failed:
            stats["failed"][it.source.id] = err
            writer.add({"key": it.key, "source": it.source.id, "status": "failed", "error": err, "run": run_hash})
        bar.update(len(failed))
        if not ready:
            continue
        t0 = time.perf_counter()
        results = gen.run(ready)
        per_item = (time.perf_counter() - t0) / len(ready)
        for it, res in zip(ready, results):
            if it.key in done:  # a regenerated group: keep the finished files as they are
                continue
            _write(it, res, out, writer, stats, args, run_hash, gen.prompt_for(it.source), per_item)
            bar.update(1)
            if stop_after and stats["generated"] + stats["dropped"] >= stop_after:
                sig = getattr(signal, "SIG" + os.environ.get(STOP_SIGNAL_ENV, "KILL").upper())
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the signal is delivered
        if all_bar is not None and time.monotonic() - last_count > 2.0:
            last_count = time.monotonic()
            all_bar.n = len(records.finished_keys(out, run_hash))
            all_bar.refresh()
    bar.close()
    return all_bar  # rank 0 closes it when every rank is done


def _write(it: Item, res: dict, out: Path, writer, stats, args, run_hash: str, prompt: str, seconds: float) -> None:
    conf = res["confidence"]
    below = args.min_confidence is not None and conf is not None and conf < args.min_confidence
    measured, gated = trace_counts(res["trace"])
    rec = {"key": it.key, "source": it.source.id, "label": it.source.label, "class_name": it.source.class_name,
           "prompt": prompt, "variant": it.variant, "seed": it.seed, "schedule": res["trace"].schedule.get("preset"),
           "confidence": conf, "trace_confidence": (res["trace"].final_confidence() or [None])[0],
           "measured_steps": measured, "gated_steps": gated, "seconds": round(seconds, 4), "run": run_hash}
    if below and args.filter == "drop":
        (out / it.output).unlink(missing_ok=True)  # a stale file of an --overwrite'n run
        rec.update(status="dropped", output=None, below_threshold=True)
        stats["dropped"] += 1
    else:
        data = encode_png(res["image"])
        dataset.atomic_write_bytes(out / it.output, data)
        rec.update(status="ok", output=it.output, sha256=hashlib.sha256(data).hexdigest(), below_threshold=below)
        stats["generated"] += 1
        stats["below"] += int(below)
    if args.traces:
        dataset.atomic_write_bytes(out / it.trace, res["trace"].to_json(indent=1).encode())
        rec["trace"] = it.trace
    writer.add(rec)
    if conf is not None:
        stats["conf"].append(conf)
    stats["measured"] += measured
    stats["gated"] += gated


def _finish(out: Path, info: Ranks, group: ProcessGroup, stats: dict, say, all_bar=None) -> int:
    group.barrier()
    if all_bar is not None:
        all_bar.n = len(records.finished_keys(out, json.loads((out / records.RUN_FILE).read_text())["hash"]))
        all_bar.close()
    every = group.gather(stats)
    summary = None
    if info.world_size == 1 or group.active:
        if info.is_main:
            summary = records.merge(out)
    grouped = group.active
    group.barrier()
    group.close()
    if grouped and not info.is_main:
        return 0  # rank 0 speaks for everyone
    n = sum(s["generated"] for s in every)
    secs = max(s["seconds"] for s in every)
    failed = {k: v for s in every for k, v in s["failed"].items()}
    who = "all ranks" if len(every) > 1 else (f"rank {info.rank}/{info.world_size}" if info.world_size > 1 else "this run")
    say(f"higfa augment ({who}): {n} images written, {sum(s['dropped'] for s in every)} dropped, "
        f"{sum(s['below'] for s in every)} marked below threshold, {sum(s['already'] for s in every)} already done; "
        f"{secs:.1f} s, {n / secs if secs > 0 else 0:.2f} images/s")
    if failed:
        say(f"  skipped inputs ({len(failed)}), unreadable or corrupt; fix or remove them and rerun:")
        for src, err in sorted(failed.items()):
            say(f"    {src}: {err}")
    totals = summary if summary is not None else records.aggregate(
        [{"confidence": c} for s in every for c in s["conf"]] + [{"gated_steps": s["gated"], "measured_steps":
                                                                 s["measured"]} for s in every])
    if summary is not None:
        say(f"  all outputs: {summary['finished']}/{summary['items']} items finished ({summary['written']} images, "
            f"{summary['dropped']} dropped{', ' + str(summary['missing']) + ' missing' if summary['missing'] else ''}) "
            f"-> {out / records.MANIFEST}")
    conf, frac = totals["mean_confidence"], totals["gated_step_fraction"]
    say(f"  mean final confidence: {conf:.3f}" if conf is not None else "  mean final confidence: - (no classifier)")
    say(f"  gated steps: {frac:.0%} of the classifier-measured steps skipped the backward pass" if frac is not None
        else "  gated steps: - (no classifier guidance)")
    if summary is not None:
        for c in summary["empty_classes"]:
            say(f"  empty class folder: {c} (no images, no synthetic images)")
        for f in summary["failed_inputs"]:
            if f["source"] not in failed:
                say(f"  skipped input (earlier session): {f['source']}: {f['error']}")
    else:
        say(f"  shard {info.rank}/{info.world_size} finished; when every shard has finished run: higfa merge {out}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    summary = records.merge(args.out)
    print(json.dumps(summary, indent=1))
    return 0 if summary["missing"] == 0 else 1


# ---------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser("augment", help="augment a whole dataset with HiGFA (resumable, torchrun/SLURM sharding)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("data")
    io.add_argument("--data", required=True, help="ImageFolder (one sub-folder per class) or CSV/JSON(L) manifest "
                    "with path,label")
    io.add_argument("--out", required=True, help="output folder (created; resumable)")
    io.add_argument("--variants", type=int, default=2, help="synthetic images per real image (default 2, SaSPA)")
    io.add_argument("--class-names", help="JSON {label: name}, or text 'label<TAB>name' lines, for the prompts "
                    "(default: folder names, '001.Black_footed_Albatross' -> 'Black footed Albatross')")
    io.add_argument("--prompt", help=f"prompt template (default {DEFAULT_PROMPT!r}; the built-in world: its own "
                    "'a photo of a {family}')")
    io.add_argument("--super", default="object", help="super-category for {super}, e.g. bird, aircraft, car")
    io.add_argument("--negative-prompt", default="", help="negative prompt (default empty)")
    io.add_argument("--limit", type=int, help="only the first N images (sorted by id): a quick try")
    io.add_argument("--traces", action="store_true", help="also write each image's per-step trace (JSON)")
    m = p.add_argument_group("models (local paths only)")
    m.add_argument("--model", required=True, help="diffusers folder, single-file SD checkpoint (+ --config), or 'builtin'")
    m.add_argument("--config", help="local diffusers config folder for a single-file checkpoint")
    m.add_argument("--controlnet", help="ControlNet folder or single file (default: MODEL/controlnet)")
    m.add_argument("--controlnet-config", help="config folder for a single-file ControlNet (default: from the UNet)")
    m.add_argument("--classifier", help="fine-grained classifier .safetensors (+ .json sidecar)")
    m.add_argument("--guidance-vae", help="decoder for the classifier path only: a diffusers AutoencoderTiny (TAESD) "
                                          "or AutoencoderKL folder, or taesd_decoder.safetensors; much faster at SD "
                                          "size (docs/speed.md). 'none': the model's VAE (default; the built-in "
                                          "world uses its shipped tiny decoder)"),
    g = p.add_argument_group("sampling")
    g.add_argument("--preset", default="higfa", choices=["cfg", "contour", "classifier-all-steps", "higfa"])
    g.add_argument("--schedule", help="schedule JSON file or inline JSON (overrides --preset)")
    g.add_argument("--scheduler", default="ddim", help="ddim (default), euler, euler_a, dpmpp_2m, unipc, pndm, heun, "
                   "lms, ddpm, or a diffusers scheduler class name")
    g.add_argument("--scheduler-options", help='JSON overrides of the scheduler config, e.g. \'{"set_alpha_to_one": true}\'')
    g.add_argument("--steps", type=int, default=30)
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic DDIM)")
    g.add_argument("--size", type=int, help="image size in pixels (default: the model's, 512 for SD 1.5)")
    g.add_argument("--seed", type=int, default=0, help="global seed; item seeds derive from (seed, image id, variant)")
    g.add_argument("--batch-size", type=int, default=1, help="items sampled together (fixed groups; default 1)")
    c = p.add_argument_group("contour")
    c.add_argument("--edges", default="canny", choices=["canny", "soft"])
    c.add_argument("--canny-low", type=float, default=120.0)
    c.add_argument("--canny-high", type=float, default=200.0)
    c.add_argument("--auto-canny", action="store_true", help="thresholds from the image median")
    c.add_argument("--edge-blur", type=float, default=0.0)
    c.add_argument("--contour-amount", type=float, default=0.5, help="transform strength in [0,1] (0 = none)")
    f = p.add_argument_group("filter")
    f.add_argument("--min-confidence", type=float, help="final classifier confidence threshold")
    f.add_argument("--filter", default="drop", choices=["drop", "mark"], help="below the threshold: drop the image "
                   "or keep it marked in the manifest")
    r = p.add_argument_group("run")
    r.add_argument("--overwrite", action="store_true", help="replace the outputs of a different run in --out")
    r.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1")
    r.add_argument("--dtype", default="float32", help="UNet/ControlNet/text-encoder dtype: float32, float16, bfloat16")
    r.add_argument("--vae-dtype", default="float32", help="VAE dtype (float32 default: SD's VAE overflows in fp16)")
    r.add_argument("--shard", help="i/n: this process does shard i of n (without torchrun/SLURM)")
    r.add_argument("--threads", type=int, help="torch CPU threads")
    r.add_argument("--deterministic", action="store_true", help="deterministic GPU kernels (slower)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--quiet", action="store_true", help="no progress bars and no summary")
    p.set_defaults(func=run)

    mp = subparsers.add_parser("merge", help="merge the per-rank records of a sharded `higfa augment` run")
    mp.add_argument("out", help="the --out folder of the run")
    mp.set_defaults(func=run_merge)
