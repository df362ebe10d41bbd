"""The arms of the quality bench (`python -m benchmarks.quality`): presets, extra arms, schedule overrides, and what
each arm's images are cached under (`plan_arms`)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from higfa.contour import ContourTransform
from higfa.files import files_digest
from higfa.schedule import PRESETS as SCHEDULE_PRESETS
from higfa.schedule import Schedule
from higfa.world.architecture import TINY_DECODER_FOLDER
from higfa.world.birds import ASSETS
from higfa.world.catalog import DEFAULT, assets

from .guides import BOOT, TUNE

ROOT = Path(__file__).resolve().parents[2]

# the arms every run has (--presets); an --extra arm may start from any schedule preset (higfa.schedule.PRESETS)
PRESETS = ("cfg", "contour", "classifier-all-steps", "higfa", "higfa-robust")
# What decodes x̂0 on the classifier path in every bench arm (the quality bench, guidance_options): the world VAE,
# whatever the world's own default (tiny_decoder.GUIDANCE_DEFAULT), so the quality results measure the method.
BENCH_DECODER = "vae"


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    preset: str
    overrides: dict
    # guidance (the shipped few-shot guide) | oracle (diagnosis only) | a classifier path | boot:ARM (a second-round
    # guide: the shipped guide's architecture trained on the few-shot images + ARM's images, `boot_guide`)
    guide: str = "guidance"
    # the confidence filter downstream: a classifier file other than the guide, and the threshold on its p(target)
    filter: str | None = None
    filter_threshold: float = 0.5
    # PGD ε: the guide is first tuned by `higfa tune-classifier --adversarial ε` (TUNE's recipe, `tuned_guide`)
    tune: float | None = None
    # a classifier file that did not guide: its p(target) on x̂0 drives the ramp, the gate and measure_every
    # (`Guide(judge=...)`, issue 25); the gradient stays the guide's
    judge: str | None = None
    # classifier files that guide together with the guide (higfa.classifier.ClassifierEnsemble: the mean of their
    # log-softmax; `higfa augment --ensemble`); none of them may judge or filter the arm
    ensemble: tuple[str, ...] = ()

    @property
    def boot_of(self) -> str | None:
        """The first-round arm whose images train this arm's guide (guide=boot:ARM), else None."""
        return self.guide[5:] if self.guide.startswith("boot:") else None

    def _spec(self, name, members: bool = True) -> str:
        """The guide spec with each classifier file written by `name`: the guide, +tune=EPS when tuned, and
        +ensemble=A+B when `members` and the arm has an ensemble."""
        spec = name(self.guide) + ("" if self.tune is None else f"+tune={self.tune}")
        return spec if not (members and self.ensemble) else f"{spec}+ensemble={'+'.join(map(name, self.ensemble))}"

    @property
    def base_key(self) -> str:
        """The guide spec, plus the tuning when there is one (what `tuned_guide` makes)."""
        return self._spec(str, members=False)

    @property
    def guide_key(self) -> str:
        """The guide as this run builds it: `base_key`, plus the ensemble's other members when there are some."""
        return self._spec(str)

    def record(self) -> dict:
        """The arm as quality.json's settings.arms records it: its fields, classifier files named by `shown`."""
        return dataclasses.asdict(self) | {"guide": shown(self.guide), "filter": shown(self.filter),
                                           "judge": shown(self.judge), "ensemble": [shown(m) for m in self.ensemble]}

    @property
    def guide_label(self) -> str:
        """`guide_key` as reports show it (quality.json's `guided_by`): each classifier file named by `shown`."""
        return self._spec(shown)


# A classifier the judge probe trains on the world's few-shot images (benchmarks.judge_probe.TRAINED, e.g.
# probe:fewshot_resnet18_pre), accepted wherever an --extra arm names a classifier file; `build_arms` makes a
# missing one.
PROBE = "probe:"


def classifier_path(spec: str, world: str = DEFAULT) -> str:
    """A classifier spec of an --extra arm as a file path: probe:NAME -> the judge probe's file of it for `world`
    (made later, by `build_arms`, when missing); any other spec unchanged."""
    if not spec.startswith(PROBE):
        return spec
    from ..judge_probe import TRAINED, trained_dir

    name = spec[len(PROBE):]
    if name not in TRAINED:
        raise ValueError(f"{spec}: not one of the judge probe's trained classifiers; use probe:NAME with NAME of "
                         f"{sorted(TRAINED)}, or a classifier file")
    return str(trained_dir(world) / f"{name}.safetensors")


def shown(spec: str | None) -> str | None:
    """How reports name a classifier spec: the judge probe's files as probe:NAME (as the arm was asked for), other
    files inside this repository by their path from its root, anything else unchanged. Results files then carry no
    machine's folders; the cache keys (`file_key`) keep the full path."""
    if spec is None or spec in ("guidance", "oracle") or spec.startswith("boot:"):
        return spec
    from ..judge_probe import TRAINED, TRAINED_DIR

    path = Path(spec).resolve()
    if path.suffix == ".safetensors" and path.stem in TRAINED and TRAINED_DIR.resolve() in (path.parent,
                                                                                            path.parent.parent):
        return PROBE + path.stem
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return spec


def cache_folder(world: str = DEFAULT) -> Path:
    """Where the bench caches `world`'s generated images and downstream runs (its default --out)."""
    return ROOT / "outputs" / ("bench_quality" if world == DEFAULT else f"bench_quality_{world}")


def guide_file(guide: str, models_path: Path) -> Path:
    """The classifier file of a guide spec that names one: the world's shipped guide ("guidance") or a path."""
    return models_path / "guidance.safetensors" if guide == "guidance" else Path(guide)


def parse_extra(item: str, base: dict, models_path: Path = ASSETS, world: str = DEFAULT) -> Arm:
    """NAME=PRESET[,FIELD=VALUE...][,guide=G][,tune=EPS][,judge=PATH][,ensemble=PATH+PATH...]
    [,filter=PATH[,filter_threshold=T]] -> Arm (guides, judges and filters named by file are compared with the world
    in `models_path`; every PATH may be probe:NAME, a classifier the judge probe trains for `world`)."""
    name, _, rest = item.partition("=")
    parts = [x for x in rest.split(",") if x]
    if not name or not parts or parts[0] not in SCHEDULE_PRESETS:
        raise ValueError(f"--extra {item!r}: use NAME=PRESET[,FIELD=VALUE...][,guide=oracle|PATH|boot:ARM]"
                         f"[,tune=EPS][,filter=PATH] with a preset of {list(SCHEDULE_PRESETS)}")
    own = {k: x.partition("=")[2] for x in parts[1:]
           for k in ("guide", "filter", "filter_threshold", "tune", "judge", "ensemble") if x.startswith(k + "=")}
    for k in ("guide", "filter", "judge"):
        if k in own:
            own[k] = classifier_path(own[k], world)
    members = tuple(classifier_path(m, world) for m in own.get("ensemble", "").split("+")) if "ensemble" in own else ()
    fields = [x for x in parts[1:] if x.partition("=")[0] not in own]
    tune = None
    if "tune" in own:
        try:
            tune = float(own["tune"])
        except ValueError:
            tune = float("nan")
        if not tune >= 0:  # NaN (not a number) fails too
            raise ValueError(f"--extra {item!r}: tune={own['tune']} must be a PGD ε >= 0 (0: tuned without PGD)")
    arm = Arm(name, parts[0], base | Schedule.parse_overrides(fields, "--extra"), own.get("guide", "guidance"),
              own.get("filter"), float(own.get("filter_threshold", 0.5)), tune, own.get("judge"), members)
    if arm.tune is not None and arm.guide == "oracle":
        raise ValueError(f"--extra {item!r}: tune= tunes a guide the product could have; the oracle is diagnosis only")
    if members:
        files = [Path(m).resolve() for m in members]
        if arm.guide == "oracle" or "" in members or "oracle" in members or len(set(files)) < len(files) or (
                arm.boot_of is None and guide_file(arm.guide, models_path).resolve() in files):
            raise ValueError(f"--extra {item!r}: ensemble=A+B... names other classifier files (or probe:NAME) that "
                             "guide together with the guide, each once, none of them the guide or the oracle")
        for k in ("judge", "filter"):
            if own.get(k) is not None and Path(own[k]).resolve() in files:
                raise ValueError(f"--extra {item!r}: {k}={own[k]} guides in the ensemble; a {k} must be a "
                                 "classifier that did not guide the arm")
    if arm.boot_of == name:
        raise ValueError(f"--extra {item!r}: guide=boot:ARM names the first-round arm whose images train the guide, "
                         "not the arm itself")
    if arm.filter is not None and (arm.filter == "oracle" or
                                   Path(arm.filter).resolve() == guide_file(arm.guide, models_path).resolve()):
        raise ValueError(f"--extra {item!r}: filter={arm.filter} must be a classifier that did not guide the arm "
                         "and is not the world oracle (it scores)")
    # A tuned guide is a copy of its file changed by PGD: the untuned file may judge it (issue 25's third pairing).
    if arm.judge is not None and (arm.judge == "oracle" or arm.tune is None and
                                  Path(arm.judge).resolve() == guide_file(arm.guide, models_path).resolve()):
        raise ValueError(f"--extra {item!r}: judge={arm.judge} must be a classifier file that did not guide the arm "
                         "and is not the world oracle (it scores)")
    return arm


def parse_sweeps(items) -> list[tuple[str, list]]:
    """--sweep FIELD=V1,V2,... -> [(field, [typed values])]."""
    out = []
    for item in items:
        name, _, values = item.partition("=")
        typed = [Schedule.parse_overrides([f"{name}={v}"], "--sweep")[name] for v in values.split(",") if v
                 ] if values else []
        if not typed:
            raise ValueError(f"--sweep {item!r}: use FIELD=V1,V2,... with a Schedule field")
        out.append((name, typed))
    return out


@functools.lru_cache(maxsize=8)
def models_digest(folder: Path) -> str:
    """`higfa.files.files_digest` (sha256, 16 hex) of what generates and guides in a world models folder: the
    diffusers parts, the shipped guide and the oracle. Not the tiny decoder (the bench guides with the VAE,
    `BENCH_DECODER`) nor training checkpoints: weights the bench does not use. Cached images and downstream runs
    are keyed by it, so retrained weights (`make train-world`) never reuse images of the old ones."""
    skip = {"checkpoints", TINY_DECODER_FOLDER}
    parts = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name not in skip] + [
        folder / "guidance.safetensors", folder / "oracle.safetensors"]
    return files_digest(folder, parts)


def models_folder(args) -> Path:
    """The world models folder of a run: --models, else the shipped folder of --world (tinybirds by default)."""
    return Path(args.models) if args.models else assets(getattr(args, "world", DEFAULT))


def models_label(args) -> str:
    """How cache keys name the models folder: --models as given, "shipped" for tinybirds' (the keys of the
    one-world bench), "shipped:<world>" for another world's."""
    if args.models:
        return str(args.models)
    world = getattr(args, "world", DEFAULT)
    return "shipped" if world == DEFAULT else f"shipped:{world}"


def file_key(path: str) -> str:
    """How an arm's cache key names a classifier file: '<path>#<sha256 of its bytes, 16 hex>'."""
    return f"{path}#{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"


def gen_settings(args, arm: Arm) -> dict:
    """What decides an arm's images (its cache key; `plan_arms` adds the sources and a boot guide's key)."""
    guide = arm.guide
    if arm.boot_of is None and guide not in ("guidance", "oracle"):  # boot:ARM: keyed in plan_arms
        guide = file_key(guide)
    out = {"shots": args.shots, "per_source": args.per_source, "steps": args.steps, "batch": args.batch,
           "seed": args.seed, "contour_transform": ContourTransform().to_dict(), "preset": arm.preset,
           "schedule_overrides": arm.overrides, "guide": guide,
           "models": f"{models_label(args)}#{models_digest(models_folder(args).resolve())}"}
    if arm.tune is not None:  # only tuned arms carry it: the others keep their cached images
        world = getattr(args, "world", DEFAULT)  # another world's guide is tuned on that world's few-shot images
        out["tune"] = TUNE | {"adversarial": arm.tune} | ({} if world == DEFAULT else {"data": f"{world}:fewshot"})
    if arm.judge is not None:  # only judged arms carry it: the others keep their cached images
        out["judge"] = file_key(arm.judge)
    if arm.ensemble:  # only ensemble arms carry it: the others keep their cached images
        out["ensemble"] = [file_key(m) for m in arm.ensemble]
    if arm.filter is not None:  # only filtered arms carry it: the others keep their cached images
        out["filter"] = [file_key(arm.filter), arm.filter_threshold]
    return out


def images_key(settings: dict) -> dict:
    """What decides an arm's images: its settings but the confidence filter (it acts after generation)."""
    return {k: v for k, v in settings.items() if k != "filter"}


def cache_ok(cache: Path, settings: dict) -> bool:
    """Does the image cache file hold images generated under `settings`?"""
    if not cache.is_file():
        return False
    try:
        meta = json.loads(str(np.load(cache)["meta"]))
    except Exception:
        return False
    return meta.get("settings") == settings


def build_arms(args, models_path: Path) -> list[Arm]:
    """The run's arms in order: --presets, --extra, then --sweep (`higfa` with one field at each value), each with
    the --set overrides; checks that --downstream names arms of the run and that a boot:ARM arm comes after ARM."""
    base = Schedule.parse_overrides(args.set)
    world = getattr(args, "world", DEFAULT)
    arms = [Arm(pr, pr, base) for pr in args.presets] + [parse_extra(e, base, models_path, world)
                                                          for e in args.extra]
    make_probe_classifiers(arms, world)
    arms += [Arm(f"{field}={value}", "higfa", base | {field: value}) for field, values in parse_sweeps(args.sweep)
             for value in values]
    unknown = sorted(set(args.downstream) - {a.name for a in arms})
    if unknown:
        raise ValueError(f"--downstream {unknown}: not an arm of this run; choose from {[a.name for a in arms]}")
    names = [a.name for a in arms]
    for i, a in enumerate(arms):
        if a.boot_of is not None and a.boot_of not in names[:i]:
            raise ValueError(f"--extra {a.name}: guide={a.guide} needs the arm {a.boot_of!r} earlier in this run "
                             f"(its images train the guide); arms before it: {names[:i]}")
    return arms


def make_probe_classifiers(arms: list[Arm], world: str) -> None:
    """Train the judge probe's classifiers (probe:NAME) that the arms name and that are missing (their file
    digests key the arms' images, so they must exist before `plan_arms`)."""
    from ..judge_probe import trained_dir, trained_file

    folder = trained_dir(world).resolve()
    for a in arms:
        for spec in (a.guide, a.judge, a.filter, *a.ensemble):
            if spec is not None and Path(spec).resolve().parent == folder and not Path(spec).is_file():
                trained_file(Path(spec).name.removesuffix(".safetensors"), world)


@dataclasses.dataclass
class Plan:
    """What a run generates, per arm name: its sources (indices into the few-shot split), its cache file and the
    settings its images are cached under, the arm whose images it reuses (`twin`: same images, another
    confidence filter) or None; per guide spec, the classifier file it is (a boot:ARM guide's once trained)."""
    arms: list[Arm]
    sources: dict[str, np.ndarray]
    caches: dict[str, Path]
    settings: dict[str, dict]
    twin: dict[str, str | None]
    guide_files: dict[str, Path]


def plan_arms(args, arms: list[Arm], real, num_classes: int, models_path: Path) -> Plan:
    """The Plan of `arms` on the few-shot split `real` (arms used downstream get all --shots sources per
    species, the others --fidelity-shots)."""
    # where each guide's file is (a boot:ARM guide's once it is trained): what a tune= arm tunes
    guide_files = {a.guide: guide_file(a.guide, models_path) for a in arms if a.boot_of is None and a.guide != "oracle"}
    few = min(args.fidelity_shots or args.shots, args.shots)
    sources = {a.name: np.arange(len(real)) if a.name in args.downstream or few == args.shots else
               np.concatenate([real.of_class(c)[:few] for c in range(num_classes)]) for a in arms}
    caches = {a.name: args.out / f"{a.name}.npz" for a in arms}
    settings = {a.name: gen_settings(args, a) | {"sources": len(sources[a.name])} for a in arms}
    for a in arms:  # a second-round guide is keyed by its recipe and by what its first round's images were
        if a.boot_of is not None:
            settings[a.name]["guide"] = {"boot": a.boot_of, "recipe": BOOT, "alpha": args.alpha,
                                         "first_round": settings[a.boot_of]}
            guide_files[a.guide] = args.out / f"guide-boot-{a.boot_of}.safetensors"
    # an arm that differs from an earlier one only in its confidence filter has the same images (the filter acts
    # after generation): they are that arm's, not generated again
    twin = {a.name: next((b.name for b in arms[:i] if images_key(settings[b.name]) == images_key(settings[a.name])),
                         None) for i, a in enumerate(arms)}
    return Plan(arms, sources, caches, settings, twin, guide_files)
