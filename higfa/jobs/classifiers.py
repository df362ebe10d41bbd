"""Bring your own classifier: `higfa train-classifier`, `import-classifier` (here), `check-classifier`
(higfa/jobs/check_classifier.py) and `tune-classifier` (higfa/jobs/tuning.py); what they share is in
higfa/jobs/guides.py. All write and read the
sidecar format of docs/classifiers.md; all training goes through `higfa.training.train_classifier`.

    higfa train-classifier --data CUB/train --architecture resnet50 --init resnet50.a1_in1k \\
        --input-size 224 --epochs 30 --out ComfyUI/models/classifiers/cub_resnet50
    higfa import-classifier --checkpoint best.pth.tar --architecture resnet50 --class-names CUB/train \\
        --input-size 224 --val CUB/val --out ComfyUI/models/classifiers/cub_resnet50
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..classifier import Classifier, provenance, save_classifier
from .guides import (AUGMENT_PRESETS, augment_preset, check_architecture, create_model, evaluate_on, out_path,
                     parse_model_kwargs, pick_norm, set_threads)
from .labelled import Labelled, read_labelled
from .second_round import Round, train_on_round

# ---------------------------------------------------------------------------- train-classifier
RESUME_SUFFIX = ".resume.pt"  # NAME.resume.pt: train-classifier's own resume file (never NAME.ckpt, a user's name)
RESUME_COMMAND = "train-classifier"  # the marker in its run_config: only such a file is resumed or removed
DEFAULT_EPOCHS = 30


def own_resume_file(path: Path) -> bool:
    """`path` is a resume file train-classifier wrote (the training loop's format and this command's marker)."""
    from ..training import read_checkpoint

    state = read_checkpoint(path)
    return state is not None and (state.get("config") or {}).get("command") == RESUME_COMMAND


def check_train_args(args: argparse.Namespace) -> None:
    """Every option that needs no file, before anything is read or written."""
    from ..classifier import check_input_size

    for name in ("epochs", "batch_size", "steps", "checkpoint_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    check_input_size(args.input_size, "--input-size")
    if not args.lr > 0:
        raise ValueError(f"--lr {args.lr}: must be > 0")
    if not args.checkpoint_minutes >= 0:
        raise ValueError(f"--checkpoint-minutes {args.checkpoint_minutes}: must be >= 0 (0: only --checkpoint-every)")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction {args.val_fraction}: must lie in [0, 1), e.g. 0.1 (0: no validation)")
    if getattr(args, "eval_every", None) is not None and args.eval_every < 0:
        raise ValueError(f"--eval-every {args.eval_every}: must be >= 0 (steps between validation passes; 0: only "
                         "at the end)")
    if getattr(args, "head_only", False) and not args.init:
        raise ValueError("--head-only trains only the final layer on the features of --init: give --init "
                         "(pretrained weights), or drop --head-only to train the whole model")


def split_val(train: Labelled, args: argparse.Namespace) -> tuple[Labelled, Labelled | None]:
    """(train, val): --val, else a seeded --val-fraction of each class (said on stdout), else none."""
    if args.val:
        return train, read_labelled(args.val, args.input_size)
    if args.val_fraction <= 0:
        return train, None
    kept, val = train.split(args.val_fraction, args.seed)
    if len(val) == 0:  # every class has a single image: nothing can be held out
        print(f"--val-fraction {args.val_fraction:g}: no class has a second image to hold out, so nothing is held "
              "out and the sidecar records no validation accuracy (pass --val DATA to measure one)", flush=True)
        return train, None
    print(f"holding out {len(val)} of {len(train)} images (--val-fraction {args.val_fraction:g} per class, seed "
          f"{args.seed}) to measure validation accuracy; they are not trained on (--val-fraction 0: train on all)",
          flush=True)
    return kept, val


def run_train(args: argparse.Namespace) -> int:
    from ..training import train_classifier
    from .distributed import ProcessGroup, Terminated, detect_ranks, pick_device, stop_on_sigterm
    from .guides import check_out

    check_train_args(args)
    arch = check_architecture(args.architecture)
    kwargs = parse_model_kwargs(args.model_kwargs)
    set_threads(args.threads)
    out = out_path(args.out)
    weights, resume = out.with_name(out.name + ".safetensors"), out.with_name(out.name + RESUME_SUFFIX)
    if resume.exists() and not own_resume_file(resume):
        raise ValueError(f"--out {out}: {resume} exists and is not a resume file of `higfa train-classifier`; it is "
                         "never read or removed: move it away, or choose another --out name")
    if args.overwrite:
        resume.unlink(missing_ok=True)  # checked above: our own
    check_out(out, args.overwrite or resume.exists())  # an unfinished run resumes; a foreign NAME.json: never
    ranks = detect_ranks()
    group = ProcessGroup(ranks) if ranks.launcher == "torchrun" else None
    device = pick_device(args.device, ranks)
    train, val = split_val(read_labelled(args.data, args.input_size), args)
    classes = train.classes
    synthetic = with_synthetic(train, classes, val, args) if args.synthetic else None
    torch.manual_seed(args.seed)
    model, cfg = create_model(arch, len(classes), args.init, kwargs)
    mean, std = pick_norm(args, cfg)
    clf = Classifier(model, classes, args.input_size, mean, std, arch, kwargs).to(device)
    per_epoch = math.ceil(len(train) / args.batch_size)  # epochs count the real images (SaSPA: replacement)
    epochs = None if args.steps else (args.epochs or DEFAULT_EPOCHS)  # what ran: steps, or epochs of steps
    steps = args.steps or per_epoch * epochs
    # how often the progress bar's val accuracy is refreshed: it changes nothing that is trained or written
    eval_every = per_epoch if args.eval_every is None else args.eval_every
    run_config = {"command": RESUME_COMMAND, "data": str(args.data), "val": str(args.val or args.val_fraction),
                  "architecture": arch, "init": args.init, "classes": classes, "input_size": args.input_size,
                  "epochs": epochs, "augment": args.augment, "world_size": ranks.world_size,
                  "steps_option": args.steps, "synthetic": str(args.synthetic), "alpha": args.alpha,
                  **({"head_only": True} if args.head_only else {})}
    if resume.exists() and ranks.is_main:
        print(f"resuming from {resume}", flush=True)
    options = dict(steps=steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                   weight_decay=args.weight_decay, augment=augment_preset(args.augment), seed=args.seed,
                   eval_images=None if val is None else val.images,
                   eval_labels=None if val is None else val.targets(classes, "--val"), eval_every=eval_every,
                   checkpoint=resume, checkpoint_every=args.checkpoint_every or 0,
                   checkpoint_seconds=60.0 * args.checkpoint_minutes, run_config=run_config,
                   progress=not args.no_progress, amp=not args.no_amp, head_only=args.head_only)
    try:
        with stop_on_sigterm():
            if synthetic is None:
                result = train_classifier(clf, train.images, train.targets(classes), **options)
            else:  # the second-round recipe's first half (higfa.jobs.second_round)
                result = train_on_round(clf, train.images, train.targets(classes), synthetic, alpha=args.alpha,
                                        **options)
    except Terminated:
        print(f"\nhigfa train-classifier: terminated (SIGTERM). {_resume_note(resume)}", file=sys.stderr, flush=True)
        return 143
    clf = result.classifier
    ev = None if val is None else evaluate_on(clf, val, "--val")
    run = {"epochs": epochs} if epochs is not None else {}
    val_data = None if val is None else str(args.val or f"{args.data} (seeded {args.val_fraction:g} split)")
    clf.provenance = provenance(str(args.data), classes, ev, command="train-classifier", val_data=val_data,
                                train_images=len(train), **run, steps=steps, init=args.init,
                                augment=args.augment, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                                **({"head_only": True} if args.head_only else {}),
                                **({"synthetic": str(args.synthetic), "synthetic_images": len(synthetic.labels),
                                    "alpha": args.alpha} if args.synthetic else {}))
    if ranks.is_main:
        save_classifier(clf.cpu(), out)
        resume.unlink(missing_ok=True)
        acc = "no val set" if ev is None else f"val accuracy {ev['accuracy']:.4f} on {ev['n']} images"
        print(f"wrote {weights} (+ {weights.with_suffix('.json').name}): {len(classes)} classes, {acc}")
    if group is not None:
        group.barrier()
        group.close()
    return 0


def _resume_note(resume: Path) -> str:
    from ..training import read_checkpoint

    state = read_checkpoint(resume)
    if state is None:
        return ("No checkpoint had been written yet (one is written every --checkpoint-every steps or "
                "--checkpoint-minutes): rerun the same command to start again")
    return (f"The checkpoint {resume} (step {int(state['step'])}) is intact: rerun the same command to resume "
            "from it")


def with_synthetic(train: Labelled, classes: list[str], val: Labelled | None, args: argparse.Namespace) -> Round:
    """The `--synthetic` images of `train`'s images as a `Round` (images, labels, source index into `train`).
    Variants of a validation image are left out, so the validation accuracy stays a held-out one."""
    from .evaluate import ImageSet, check_alpha, load_synthetic, source_index

    check_alpha(args.alpha)
    if not Path(args.synthetic).is_dir():
        raise FileNotFoundError(f"--synthetic {args.synthetic} not found: give a `higfa augment` --out folder "
                                "(manifest.jsonl) or an ImageFolder of synthetic images")
    syn = load_synthetic(args.synthetic, args.input_size, classes)
    y_real = train.targets(classes)
    src = source_index(ImageSet(train.images, y_real, [], ids=train.ids), syn)
    if val is not None and syn.sources is not None:  # drop the variants of held-out images
        held = set(val.ids)
        keep = np.array([s not in held for s in syn.sources])
        syn = ImageSet(syn.images[keep], syn.labels[keep], syn.failed)
        src = src[keep]
    if len(syn.labels) == 0:
        raise ValueError(f"--synthetic {args.synthetic}: no synthetic image of a training source is left")
    return Round(syn.images, syn.labels, src)


# ---------------------------------------------------------------------------- import-classifier
def read_class_list(spec: str) -> list[str]:
    """Class names from an ImageFolder (its sorted sub-folders), a JSON list or {index: name}, or a text
    file with one name per line."""
    p = Path(spec).expanduser()
    if p.is_dir():
        from .dataset import scan_image_folder

        return scan_image_folder(p)[1]
    if not p.is_file():
        raise FileNotFoundError(f"--class-names {spec} not found: give a dataset folder, a .json list or a text "
                                "file with one class name per line")
    if p.suffix.lower() == ".json":
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            try:
                data = [data[k] for k in sorted(data, key=int)]
            except ValueError:
                raise ValueError(f"--class-names {p}: a JSON object must map indices to names") from None
        if not isinstance(data, list):
            raise ValueError(f"--class-names {p}: expected a JSON list of names or {{index: name}}")
        return [str(n) for n in data]
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


def load_state(checkpoint: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, architecture recorded in the checkpoint or None) of a .safetensors / .pth / .bin file.
    Read with weights_only=True: nothing in the file is unpickled as code (a whole pickled model is refused,
    asking for its state dict saved by the code that built the model)."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint} not found")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), None
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends
            raise ValueError(f"--checkpoint {path} is not a readable .safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle refuses a module under weights_only
        # No advice to unpickle: a whole pickled model is re-saved from the code that built it, never loaded as code.
        raise ValueError(f"--checkpoint {path} could not be read as a state dict ({type(e).__name__}); if it is a "
                         "whole model saved with torch.save(model, ...), save its weights instead where the model "
                         f"is built: torch.save(model.state_dict(), '{path.with_suffix('.state.pth')}') (or "
                         "safetensors' save_file), and pass that file") from e
    arch = None  # weights_only=True never returns a whole module, so the dict is all there is to read
    if isinstance(obj, dict):
        arch = obj["arch"] if isinstance(obj.get("arch"), str) else None
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"--checkpoint {path} holds no state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}, arch


def run_import(args: argparse.Namespace) -> int:
    import timm

    from ..classifier import check_input_size
    from .guides import check_out

    if args.input_size is not None:
        check_input_size(args.input_size, "--input-size")
    kwargs = parse_model_kwargs(args.model_kwargs)
    if not args.class_names:
        raise ValueError("import-classifier needs --class-names: a dataset folder (its class folders, sorted), a "
                         ".json list or a text file with one name per line, in the order of the model's outputs")
    check_out(out_path(args.out), args.overwrite)
    state, recorded = load_state(args.checkpoint)
    arch = check_architecture(args.architecture or recorded or "")
    names = read_class_list(args.class_names)
    model = timm.create_model(arch, pretrained=False, num_classes=len(names), **kwargs)
    head = model.pretrained_cfg.get("classifier", "fc")
    head = head[0] if isinstance(head, (list, tuple)) else head
    hw = state.get(f"{head}.weight")
    if hw is not None and int(hw.shape[0]) != len(names):
        raise ValueError(f"--class-names {args.class_names} gives {len(names)} classes but the checkpoint's head "
                         f"'{head}' has {int(hw.shape[0])} outputs: give one name per output, in output order")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"--checkpoint {args.checkpoint} does not match --architecture {arch}: "
                         f"{str(e).strip().splitlines()[-1][:300]}") from e
    cfg = model.pretrained_cfg
    size = args.input_size or check_input_size(list(cfg.get("input_size", (3, 224, 224))), "the model's input_size")[1]
    mean, std = pick_norm(argparse.Namespace(mean=args.mean, std=args.std, init=True), cfg)
    clf = Classifier(model, names, size, mean, std, arch, kwargs).eval().requires_grad_(False)
    with torch.no_grad():
        try:
            logits = clf(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)))
        except RuntimeError as e:
            raise ValueError(f"the {arch} model rejects {size}x{size} images ({str(e).splitlines()[0][:200]}): set "
                             "--input-size (or --model-kwargs, e.g. img_size for a ViT)") from e
    if tuple(logits.shape) != (2, len(names)):
        raise ValueError(f"the model gives {tuple(logits.shape)} logits for 2 images, not (2, {len(names)})")
    ev = evaluate_on(clf, read_labelled(args.val, size), "--val") if args.val else None
    clf.provenance = provenance(str(args.checkpoint), names, ev, command="import-classifier",
                                val_data=str(args.val) if args.val else None)
    path = save_classifier(clf, out_path(args.out))
    acc = "" if ev is None else f", val accuracy {ev['accuracy']:.4f} on {ev['n']} images"
    print(f"wrote {path} (+ {path.with_suffix('.json').name}): {arch}, {len(names)} classes, {size} px{acc}")
    return 0


# ---------------------------------------------------------------------------- CLI
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", type=float, nargs=3, help="per-channel mean for images in [0,1] (default: the "
                   "pretrained weights', else ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, help="per-channel std (default as --mean)")
    p.add_argument("--model-kwargs", help="JSON of extra timm.create_model arguments, e.g. '{\"img_size\": 224}'")


def register(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a guidance classifier (timm) on your images: sidecar format",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder (one sub-folder per class) or CSV/JSON(L) manifest "
                   "(path,label), as `higfa augment` reads; or builtin:<split>[:n]")
    p.add_argument("--val", help="validation data in the same forms (default: a seeded split of --data)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="without --val: this share of each class's "
                   "images is held out (not trained on) to measure validation accuracy; the command says how many "
                   "(default 0.1; 0: train on every image, no validation)")
    p.add_argument("--eval-every", type=int, help="with a validation set: measure its accuracy (shown on the "
                   "progress bar) every N optimiser steps (default: once per epoch; 0: only at the end). Costs time "
                   "only: the weights are the same whatever N")
    p.add_argument("--architecture", required=True, help="any timm model name, e.g. resnet50, convnext_tiny")
    p.add_argument("--init", help="pretrained start: a local .pth/.bin/.safetensors file, or a timm name whose "
                   "weights are in the local Hugging Face cache (nothing is downloaded); default: from scratch")
    p.add_argument("--input-size", type=int, default=224, help="square input size in pixels (default 224)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help=f"passes over the training images (default {DEFAULT_EPOCHS})")
    length.add_argument("--steps", type=int, help="total optimiser steps instead of --epochs")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over torchrun ranks)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW peak learning rate (default 3e-3; ~1e-3 when "
                   "fine-tuning pretrained weights)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=30, help="linear warm-up steps before the cosine decay (default 30)")
    p.add_argument("--augment", default="default", choices=AUGMENT_PRESETS, help="augmentation preset: none, light, "
                   "default (flip, shift, scale, rotation), robust (default + noise and blur)")
    p.add_argument("--synthetic", help="also train on a `higfa augment` --out folder (or an ImageFolder) of synthetic "
                   "images, SaSPA style: each real image replaced by one of its variants with probability --alpha; "
                   "e.g. a second-round guide trained on the first round's images (docs/classifiers.md)")
    p.add_argument("--alpha", type=float, default=0.4, help="with --synthetic: replacement probability (default 0.4)")
    p.add_argument("--head-only", action="store_true", help="train only the final layer on the frozen features of "
                   "--init (a linear probe: few images, pretrained features kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="models/classifiers/NAME: writes NAME.safetensors + NAME.json; "
                   f"NAME{RESUME_SUFFIX} beside it while training (a rerun of the same command resumes from it)")
    p.add_argument("--overwrite", action="store_true", help=f"start over even if NAME or NAME{RESUME_SUFFIX} exists "
                   "(a NAME.json that higfa did not write is never replaced)")
    p.add_argument("--checkpoint-every", type=int, help="also write the resume file every N optimiser steps "
                   "(default: by time only, see --checkpoint-minutes)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0, help="write the resume file when this many "
                   "minutes have passed since the last one (default 10; 0: only --checkpoint-every)")
    p.add_argument("--threads", type=int, help="torch CPU threads (as `higfa augment`; default: torch's)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, cuda, cuda:1")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--no-progress", action="store_true")
    _common(p)
    p.set_defaults(func=run_train)

    q = sub.add_parser("import-classifier", help="wrap an existing timm checkpoint + class names into the sidecar "
                       "format", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--checkpoint", required=True, help="a timm state dict (.safetensors, .pth, .pth.tar, .bin; timm's "
                   "train.py checkpoints included)")
    q.add_argument("--architecture", help="timm model name (default: the 'arch' the checkpoint records)")
    q.add_argument("--class-names", help="dataset folder (its class folders), .json list or text file, in output order")
    q.add_argument("--input-size", type=int, help="square input size (default: the architecture's)")
    q.add_argument("--val", help="optional labelled data: its accuracy goes into the sidecar")
    q.add_argument("--out", required=True, help="models/classifiers/NAME")
    q.add_argument("--overwrite", action="store_true", help="replace an existing NAME.safetensors (a NAME.json that "
                   "higfa did not write is never replaced)")
    _common(q)
    q.set_defaults(func=run_import)

