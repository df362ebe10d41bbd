"""The `higfa augment` job: run `AugmentSettings` over a dataset, resumably, on one shard.

Order matters for a user's data: every option and folder is checked first (nothing written), then the
inputs are read, the shard is locked, the models load, the output folder is claimed for this run
(`records.check_run`: same settings and same model files, or --overwrite), and only then are images
written. Outputs (`higfa.jobs.records`): OUT/images/<label>/<name>_v<k>.png (an ImageFolder), optional
OUT/traces/..., OUT/manifest.jsonl, run.json (the run's settings), summary.json.

Ctrl-C (SIGINT) and SIGTERM (SLURM preemption) drop the group in flight, keep every finished record and
image, merge them (one process) and end the run: `cli` exits 130 or 143; a rerun finishes the rest.
(About 370 lines: the order of checks above is the point of this file, so it stays in one place.)
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model_path import default_builtin_classifier, is_builtin, model_path
from . import records, safety
from .distributed import ProcessGroup, Ranks, Terminated, detect_ranks, pick_device, shard, stop_on_sigterm
from .dataset import SourceError, encode_png, read_sources
from .item_sampler import ItemSampler, Sampled, trace_counts
from .plan import Item, make_groups, make_items, make_sources, resolve_targets
from .prompts import DEFAULT_PROMPT, PromptText, check_prompt, model_prompts, prompt_names
from .settings import AugmentSettings


@dataclass
class Stats:
    """What one process did (gathered from every rank at the end)."""

    rank: int
    already: int = 0  # items finished by an earlier session
    generated: int = 0
    dropped: int = 0  # below --min-confidence with --filter drop
    below: int = 0  # below --min-confidence, kept and marked
    failed: dict[str, str] = field(default_factory=dict)  # source id -> why it could not be read
    seconds: float = 0.0
    conf: list[float] = field(default_factory=list)
    measured: int = 0  # classifier-measured steps
    gated: int = 0  # ... of which the backward pass was gated

    @property
    def produced(self) -> int:
        return self.already + self.generated + self.dropped


# ---------------------------------------------------------------------------- setup
def fingerprint(s: AugmentSettings, prompt: str, classifier: str | None, schedule, components, size: int,
                names: dict[str, str], content: dict[str, str]) -> dict[str, Any]:
    """Everything that decides an output's bytes (and which outputs exist), the model files' content
    included. Not in it: the input list, --variants and --limit (they add or leave out items; existing
    outputs stay valid)."""
    sched = {k: v for k, v in components.scheduler.config.items() if not k.startswith("_")}
    return {"model": components.source, "classifier": str(Path(classifier).resolve()) if classifier else None,
            "scheduler": [s.scheduler, sched], "steps": s.steps, "eta": s.eta,
            "size": size, "seed": s.seed, "schedule": schedule.to_dict(), "prompt": prompt,
            "negative_prompt": s.negative_prompt, "super": s.super_name, "class_names": names,
            "edges": s.edge_detector().__dict__, "contour": s.contour_transform().to_dict(),
            "batch_size": s.batch_size, "dtype": s.dtype, "vae_dtype": s.vae_dtype,
            "min_confidence": s.min_confidence, "filter": s.filter if s.min_confidence is not None else None,
            "content": content}


def size_multiple(folder: str | Path | None) -> int | None:
    """What --size must be a multiple of, from a diffusers folder's unet/ and vae/ configs (VAE scale x
    UNet down-sampling); None when `folder` has none (the check then runs on the loaded model)."""
    try:
        unet = json.loads((Path(folder) / "unet" / "config.json").read_text())
        vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
        return 2 ** (len(vae["block_out_channels"]) - 1) * 2 ** (len(unet["block_out_channels"]) - 1)
    except (OSError, TypeError, KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------- the run
def load_guidance_decoder(s: AugmentSettings, device, dtype):
    """(module, source) of --guidance-vae; for --model builtin without it, the world's shipped tiny decoder
    when `GUIDANCE_DEFAULT` says so (docs/speed.md); None: the VAE guides."""
    from ..backends.denoiser import load_guidance_vae
    from ..world.architecture import GUIDANCE_DEFAULT, TINY_DECODER_FOLDER as FOLDER

    choice = s.guidance_vae
    if (choice is None and is_builtin(s.model) and GUIDANCE_DEFAULT == "tiny"
            and (model_path(s.model) / FOLDER).is_dir()):
        choice = str(model_path(s.model) / FOLDER)
    if choice is None or choice == "none":
        return None
    return load_guidance_vae(choice, device, dtype), str(Path(choice).resolve())


def run_augment(s: AugmentSettings) -> int:
    """Run (this shard of) the job; 0 when something was produced, 1 when nothing could be. SIGTERM
    raises `Terminated` meanwhile (after the shard's records are flushed and merged)."""
    with stop_on_sigterm():
        return _run(s)


def _run(s: AugmentSettings) -> int:
    """The job in the order its guarantees need (one function so that order stays visible): every input and
    setting checked before a model loads, the shard lock before any output, the run's fingerprint checked
    against the folder before the first item is sampled."""
    import torch

    from ..backends.components import load_components, parse_dtype
    from ..classifier import load_classifier

    s.validate()
    info = detect_ranks(shard=s.shard)
    data, out = Path(s.data).expanduser(), Path(s.out).expanduser()
    world_text = model_prompts(s.model)
    prompt = s.prompt if s.prompt is not None else (world_text[0] if world_text else DEFAULT_PROMPT)
    check_prompt(prompt)
    schedule = s.build_schedule()
    classifier_path = s.classifier or (default_builtin_classifier(s.model) if is_builtin(s.model) else None)
    if s.min_confidence is not None and not (classifier_path or s.filter_classifier):
        raise ValueError("--min-confidence needs --classifier or --filter-classifier (the confidence is a "
                         "classifier's)")
    if s.judge and not schedule.uses_classifier:
        raise ValueError(f"--judge {s.judge}: preset/schedule '{schedule.preset}' takes no classifier step, so "
                         "there is nothing to judge: choose a preset with classifier guidance (e.g. higfa-judged)")
    if s.ensemble and not (classifier_path and schedule.uses_classifier):
        raise ValueError(f"--ensemble {s.ensemble[0]}: its members guide together with --classifier; pass "
                         "--classifier PATH.safetensors and a preset with classifier guidance (e.g. higfa-robust)")
    if schedule.uses_classifier and not classifier_path:
        raise ValueError(f"preset/schedule '{schedule.preset}' uses classifier guidance: pass --classifier "
                         "PATH.safetensors (timm weights + .json sidecar), or choose --preset cfg or contour")
    if s.judge and any(Path(s.judge).resolve() == Path(m).resolve() for m in (classifier_path, *s.ensemble)):
        raise ValueError(f"--judge {s.judge}: it also guides (--classifier or --ensemble); a judge is a classifier "
                         "that did not guide: choose another")
    safety.check_folders(data, out)
    device = pick_device(s.device, info)
    dtype, vae_dtype = parse_dtype(s.dtype), parse_dtype(s.vae_dtype)
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("--dtype float16 needs a GPU; use float32 or bfloat16 on the CPU")

    # Inputs first (cheap), so bad data fails before any model is loaded.
    found, labels, empty = read_sources(data, s.limit)
    safety.check_inputs((i.path for i in found), out)
    names = prompt_names(labels, {i.label for i in found}, s.class_names, world_text[1] if world_text else None)
    model_dir = model_path(s.model)
    multiple = size_multiple(s.config or model_dir)
    if s.size and multiple and s.size % multiple:
        raise ValueError(f"--size {s.size}: must be a multiple of {multiple} for this model")
    content, cache = safety.content_fingerprint(safety.model_files(
        [model_dir, s.config, s.controlnet, s.controlnet_config, classifier_path,
         None if s.guidance_vae in (None, "none") else s.guidance_vae, s.filter_classifier, s.judge, *s.ensemble]),
        records.file_cache(out))
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False

    created = not out.exists()
    lock = safety.ShardLock(out, info.rank, info.world_size).acquire()
    try:
        classifier = load_classifier(classifier_path, device) if classifier_path else None
        if s.ensemble:
            from ..classifier import ClassifierEnsemble

            classifier = ClassifierEnsemble([classifier, *(load_classifier(m, device) for m in s.ensemble)])
        sources = make_sources(found, names, classifier)
        judge = None
        if s.filter_classifier:  # --filter-classifier: final images are scored by a classifier that did not guide
            judge_clf = load_classifier(s.filter_classifier, device)
            by_label = resolve_targets([i.label for i in found], names, judge_clf, "--filter-classifier")
            judge = (judge_clf, {src.id: by_label[i.label] for i, src in zip(found, sources)})
        sampling_judge = None
        if s.judge:  # --judge: its p drives the ramp and the gate; without --filter-classifier it scores too
            sj = load_classifier(s.judge, device)
            by_label = resolve_targets([i.label for i in found], names, sj, "--judge")
            sampling_judge = (sj, {src.id: by_label[i.label] for i, src in zip(found, sources)}, Path(s.judge).name)
            if judge is None:
                judge = sampling_judge[:2]
        items = make_items(sources, s.variants, s.seed)
        components = load_components(model_dir, controlnet=s.controlnet, config=s.config,
                                     controlnet_config=s.controlnet_config, scheduler=s.scheduler,
                                     scheduler_options=s.scheduler_options, need_controlnet=schedule.uses_contour)
        components.to(device, dtype, vae_dtype)
        size = s.size or components.default_size
        multiple = components.vae_scale * 2 ** (len(components.unet.config.block_out_channels) - 1)
        if size % multiple:
            raise ValueError(f"--size {size}: must be a multiple of {multiple} for this model")
        fp = fingerprint(s, prompt, classifier_path, schedule, components, size,
                         {src.label: src.class_name for src in sources}, content)
        guidance_vae = load_guidance_decoder(s, device, vae_dtype) if schedule.uses_classifier else None
        if guidance_vae is not None:  # runs without one keep their fingerprint (and their outputs) unchanged
            fp["guidance_vae"] = guidance_vae[1]
        if s.filter_classifier:  # likewise: only runs that use one record it
            fp["filter_classifier"] = str(Path(s.filter_classifier).resolve())
        if s.judge:
            fp["judge"] = str(Path(s.judge).resolve())
        if s.ensemble:
            fp["ensemble"] = [str(Path(m).resolve()) for m in s.ensemble]
        sampler = ItemSampler(components, schedule, classifier, size=size, steps=s.steps, eta=s.eta,
                              prompt=PromptText(prompt, s.super_name, s.negative_prompt),
                              edges=s.edge_detector(), transform=s.contour_transform(), device=device,
                              guidance_vae=None if guidance_vae is None else guidance_vae[0], judge=judge,
                              sampling_judge=sampling_judge)
        # Everything is checked and built: only now is the folder claimed (run.json), then planned.
        run_hash = records.check_run(out, fp, s.overwrite, file_cache=cache)
        records.write_json(out / records.PLAN_FILE, {"run": run_hash, "items": [it.key for it in items],
                                                     "empty_classes": empty, "exact": s.overwrite})
        job = _Job(s, info, out, run_hash, sampler)
        if info.is_main:
            job.say(f"higfa augment: {len(items)} items ({len(sources)} images x {s.variants} variants, "
                    f"{len(set(src.label for src in sources))} classes) -> {out}; {info.world_size} process(es) "
                    f"({info.launcher}), device {device}, run {run_hash}")
            if lock.unsupported:
                job.say(f"  warning: {out} does not support file locks: make sure no other run writes it")
            if lock.took_over:
                job.say(f"  took over the lock of an ended process: {lock.took_over}")
            for c in empty:
                job.say(f"  warning: class folder '{c}' has no images; it gets no synthetic images")
            job.say(f"  prompt, e.g.: {sampler.prompt.for_source(sources[0])!r}")
        return job.run(make_groups(items, s.batch_size))
    finally:
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run stopped before writing anything leaves no folder behind


class _Job:
    """The loop over this shard's groups, writing images, traces and records, and the end-of-run summary."""

    def __init__(self, s: AugmentSettings, info: Ranks, out: Path, run_hash: str, sampler: ItemSampler):
        self.s, self.info, self.out, self.run_hash, self.sampler = s, info, out, run_hash, sampler
        self.stats = Stats(rank=info.rank)
        self.show_bars = s.progress and not s.quiet

    def say(self, msg: str) -> None:
        if not self.s.quiet:
            print(msg, file=sys.stderr, flush=True)

    def run(self, groups: list[list[Item]]) -> int:
        info, out = self.info, self.out
        group = ProcessGroup(info)
        mine = shard(groups, info)
        done = records.finished_keys(out, self.run_hash)
        todo = [g for g in mine if any(it.key not in done for it in g)]
        self.stats.already = sum(it.key in done for g in mine for it in g)
        writer = records.PartWriter(out, info.rank, info.world_size)
        t_start = time.perf_counter()
        try:
            all_bar = self._loop(todo, done, writer)
        except (KeyboardInterrupt, Terminated):
            writer.close()
            if info.world_size == 1:
                records.merge(out)  # the manifest lists everything finished so far
            raise
        finally:
            writer.close()
            self.stats.seconds = time.perf_counter() - t_start
        return self._finish(group, all_bar)

    def _loop(self, todo: list[list[Item]], done: set[str], writer: records.PartWriter):
        from tqdm import tqdm

        info, out, stats = self.info, self.out, self.stats
        bar = tqdm(total=sum(len(g) for g in todo), desc=f"rank {info.rank}/{info.world_size}",
                   position=info.rank if info.world_size > 1 else 0, disable=not self.show_bars, unit="img",
                   dynamic_ncols=True, leave=True)
        all_bar = None
        if info.is_main and info.world_size > 1 and self.show_bars:
            plan_total = len(json.loads((out / records.PLAN_FILE).read_text())["items"])
            all_bar = tqdm(total=plan_total, desc="all ranks", position=info.world_size, unit="img",
                           dynamic_ncols=True)
        last_count = 0.0
        for group in todo:
            ready = []
            for it in group:  # an unreadable input fails its items, not the group's other items
                try:
                    self.sampler.load(it.source)
                    ready.append(it)
                except SourceError as e:
                    stats.failed[it.source.id] = str(e)
                    writer.add({"key": it.key, "source": it.source.id, "status": "failed", "error": str(e),
                                "run": self.run_hash})
                    bar.update(1)
            if not ready:
                continue
            t0 = time.perf_counter()
            results = self.sampler.run(ready)
            per_item = (time.perf_counter() - t0) / len(ready)
            for it, res in zip(ready, results):
                if it.key in done:  # a regenerated group: keep the finished files as they are
                    continue
                self._write(it, res, writer, per_item)
                bar.update(1)
            if all_bar is not None and time.monotonic() - last_count > 2.0:
                last_count = time.monotonic()
                all_bar.n = len(records.finished_keys(out, self.run_hash))
                all_bar.refresh()
        bar.close()
        return all_bar  # rank 0 closes it when every rank is done

    def _write(self, it: Item, res: Sampled, writer: records.PartWriter, seconds: float) -> None:
        s, out, stats = self.s, self.out, self.stats
        conf = res.confidence
        below = s.min_confidence is not None and conf is not None and conf < s.min_confidence
        measured, gated = trace_counts(res.trace)
        rec = {"key": it.key, "source": it.source.id, "label": it.source.label, "class_name": it.source.class_name,
               "prompt": self.sampler.prompt.for_source(it.source), "variant": it.variant, "seed": it.seed,
               "schedule": res.trace.schedule.get("preset"), "confidence": conf,
               "trace_confidence": (res.trace.final_confidence() or [None])[0], "measured_steps": measured,
               "gated_steps": gated, "seconds": round(seconds, 4), "run": self.run_hash}
        if res.trace.judge is not None:  # only judged runs: the others keep their manifest bytes
            rec["trace_judge_confidence"] = (res.trace.final_judge_confidence() or [None])[0]
        if below and s.filter == "aside":  # kept for inspection, outside the ImageFolder that goes downstream
            data = encode_png(res.image)
            (out / it.output).unlink(missing_ok=True)
            aside = "dropped/" + it.output.removeprefix("images/")
            records.write_output(out, aside, data)
            rec.update(status="dropped", output=aside, sha256=records.sha256(data), below_threshold=True)
            stats.dropped += 1
        elif below and s.filter == "drop":
            (out / it.output).unlink(missing_ok=True)  # a stale file of an --overwrite'n run
            rec.update(status="dropped", output=None, below_threshold=True)
            stats.dropped += 1
        else:
            data = encode_png(res.image)
            records.write_output(out, it.output, data)
            rec.update(status="ok", output=it.output, sha256=records.sha256(data), below_threshold=below)
            stats.generated += 1
            stats.below += int(below)
        if s.traces:
            records.write_output(out, it.trace, res.trace.to_json(indent=1).encode())
            rec["trace"] = it.trace
        writer.add(rec)
        if conf is not None:
            stats.conf.append(conf)
        stats.measured += measured
        stats.gated += gated

    def _finish(self, group: ProcessGroup, all_bar=None) -> int:
        info, out, say = self.info, self.out, self.say
        group.barrier()
        if all_bar is not None:
            all_bar.n = len(records.finished_keys(out, self.run_hash))
            all_bar.close()
        every: list[Stats] = group.gather(self.stats)
        summary = None
        if info.world_size == 1 or group.active:
            if info.is_main:
                summary = records.merge(out)
        grouped = group.active
        group.barrier()
        group.close()
        if grouped and not info.is_main:
            return 0  # rank 0 speaks for everyone
        n = sum(st.generated for st in every)
        secs = max(st.seconds for st in every)
        failed = {k: v for st in every for k, v in st.failed.items()}
        who = "all ranks" if len(every) > 1 else (f"rank {info.rank}/{info.world_size}" if info.world_size > 1
                                                  else "this run")
        say(f"higfa augment ({who}): {n} images written, {sum(st.dropped for st in every)} dropped, "
            f"{sum(st.below for st in every)} marked below threshold, {sum(st.already for st in every)} already "
            f"done; {secs:.1f} s, {n / secs if secs > 0 else 0:.2f} images/s")
        if failed:
            say(f"  skipped inputs ({len(failed)}), unreadable or corrupt; fix or remove them and rerun:")
            for src, err in sorted(failed.items()):
                say(f"    {src}: {err}")
        totals = summary if summary is not None else records.aggregate(
            [{"confidence": c} for st in every for c in st.conf]
            + [{"gated_steps": st.gated, "measured_steps": st.measured} for st in every])
        if summary is not None:
            say(f"  all outputs: {summary['finished']}/{summary['items']} items finished ({summary['written']} "
                f"images, {summary['dropped']} dropped"
                f"{', ' + str(summary['missing']) + ' missing' if summary['missing'] else ''}) -> "
                f"{out / records.MANIFEST}")
        conf, frac = totals["mean_confidence"], totals["gated_step_fraction"]
        say(f"  mean final confidence: {conf:.3f}" if conf is not None
            else "  mean final confidence: - (no classifier)")
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
        produced = summary["finished"] if summary is not None else sum(st.produced for st in every)
        if failed and not produced:
            say("  nothing produced: every input of this run failed (see above); summary.json says so. Fix the "
                "inputs and rerun")
            return 1
        return 0
