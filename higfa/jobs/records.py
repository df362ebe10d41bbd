"""The output folder of a dataset job: its run fingerprint, per-rank record shards, and the merge.

    OUT/run.json                 the settings that decide the bytes, and their hash (the run id)
    OUT/plan.json                the ordered item keys (image id # variant) of the run
    OUT/parts/rank-R-of-W.jsonl  one JSON record per finished (or failed) item, appended by rank R
    OUT/manifest.jsonl           the merged records, in plan order (`higfa merge`, or at the end)
    OUT/summary.json             totals of the merged run

An item is finished when a record of the current run says so and its image exists (or it was
dropped by the confidence filter). Records of another run are never trusted: with `--overwrite`
they are ignored and their items regenerated, and the merge removes the files they list that this
run did not write; without it, a different run.json (other settings, or a model file whose content
changed) stops the job.
Every file is written atomically or appended line by line and fsynced, so a killed job loses at
most the item in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..files import atomic_write_bytes

RUN_FILE, PLAN_FILE, MANIFEST, SUMMARY, PARTS = "run.json", "plan.json", "manifest.jsonl", "summary.json", "parts"


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def read_run(out: Path) -> dict[str, Any]:
    """run.json of `out` ({} when there is none or it is unreadable)."""
    try:
        data = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_cache(out: Path) -> dict[str, list]:
    """The model files' digests the last run of `out` computed, {path: [size, mtime_ns, digest]}."""
    cache = read_run(out).get("file_cache")
    return cache if isinstance(cache, dict) else {}


def check_not_foreign(out: Path) -> None:
    """Refuse a non-empty folder that `higfa augment` did not write (even with --overwrite: the folder
    must end up holding this run's outputs only)."""
    if out.is_dir() and not (out / RUN_FILE).is_file() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"output folder {out} is not empty and was not written by `higfa augment`: choose an empty "
                         "or new --out (--overwrite only replaces an earlier `higfa augment` run)")


def check_run(out: Path, fingerprint: dict[str, Any], overwrite: bool, file_cache: dict[str, list] | None = None
              ) -> str:
    """Claim `out` for this run; returns the run hash. Raises when `out` holds a different run's
    outputs and `overwrite` is off (naming what differs, a changed model file by name, and the fix)."""
    from .safety import changed_files

    run_hash = fingerprint_hash(fingerprint)
    check_not_foreign(out)
    old = read_run(out)
    if old and old.get("hash") != run_hash and not overwrite and has_outputs(out):
        before = old.get("fingerprint", {})
        diff = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        changed = changed_files(before.get("content") or {}, fingerprint.get("content") or {})
        if diff == ["content"] and before.get("content") is not None:
            raise ValueError(f"model file {changed[0]} changed since the run in {out} began"
                             f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}: its outputs would mix "
                             "two models. Restore the file, use another --out, or pass --overwrite to regenerate "
                             "every item with the file as it is now")
        parts = [f"{k}: {_short(before.get(k))} -> {_short(fingerprint.get(k))}" for k in diff if k != "content"]
        if "content" in diff:
            parts.append(f"model files: {', '.join(changed[:3])}" if before.get("content") is not None
                         else "model-file digests, new in this version")
        shown = "; ".join(parts)
        raise ValueError(f"output folder {out} holds the outputs of a different run (differs in {shown or 'version'}). "
                         "Use another --out, rerun with the same settings to resume, or pass --overwrite to "
                         "regenerate every item with the new settings")
    write_json(out / RUN_FILE, {"hash": run_hash, "fingerprint": fingerprint, "file_cache": file_cache or {}})
    return run_hash


def has_outputs(out: Path) -> bool:
    """`out` holds something a run produced: a record line, a manifest row, or a file under OUT/images,
    OUT/traces or OUT/dropped. A run stopped before its first item (killed while loading, out of memory on
    the first step) produced nothing, so a corrected rerun may take the folder over without --overwrite."""
    if any(p.stat().st_size > 0 for p in (out / PARTS).glob("*.jsonl")):
        return True
    if (out / MANIFEST).is_file() and (out / MANIFEST).stat().st_size > 0:
        return True
    return any(p.is_file() for d in OUTPUT_FOLDERS for p in (out / d).rglob("*"))


def write_output(out: Path, rel: str, data: bytes) -> None:
    """Write OUT/rel atomically; `rel` must stay inside `out` (labels are checked earlier: this is the
    last guard)."""
    path = out / rel
    if not path.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"output path {rel!r} leaves {out}: refusing to write it")
    atomic_write_bytes(path, data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True)
    return s if len(s) <= 60 else s[:57] + "..."


def part_path(out: Path, rank: int, world: int) -> Path:
    return out / PARTS / f"rank-{rank:05d}-of-{world:05d}.jsonl"


def read_records(out: Path, run_hash: str | None = None) -> list[dict[str, Any]]:
    """All records of all part files (of this run when `run_hash` is given), in file order. A torn
    last line (a job killed mid-append) is skipped."""
    records = []
    for part in sorted((out / PARTS).glob("*.jsonl")):
        for line in part.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and (run_hash is None or rec.get("run") == run_hash):
                records.append(rec)
    return records


def finished_keys(out: Path, run_hash: str) -> set[str]:
    """Items of this run that need no more work: a record with an existing image, or dropped."""
    done = set()
    for rec in read_records(out, run_hash):
        if rec.get("status") == "dropped" or (rec.get("status") == "ok" and (out / rec["output"]).is_file()):
            done.add(rec["key"])
    return done


class PartWriter:
    """Appends records to this rank's part file; each line is flushed and fsynced."""

    def __init__(self, out: Path, rank: int, world: int):
        self.path = part_path(out, rank, world)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self.path.open("a", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def merge(out: str | Path) -> dict[str, Any]:
    """Merge the part files of the run in `out` into manifest.jsonl (plan order, one line per
    finished item) and summary.json; remove temp files left by killed writers. Returns the summary."""
    out = Path(out)
    if not (out / RUN_FILE).is_file():
        raise FileNotFoundError(f"{out / RUN_FILE} not found: {out} is not the output folder of `higfa augment`")
    run_hash = json.loads((out / RUN_FILE).read_text())["hash"]
    plan = json.loads((out / PLAN_FILE).read_text()) if (out / PLAN_FILE).is_file() else {}
    order = {k: i for i, k in enumerate(plan.get("items", []))}
    latest: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    exact = bool(plan.get("exact"))  # --overwrite: only the plan's items count (and keep their files)
    for rec in read_records(out, run_hash):
        if exact and rec["key"] not in order:
            continue
        if rec.get("status") == "failed":
            failed[rec["key"]] = rec
        elif rec.get("status") == "dropped" or (out / rec["output"]).is_file():
            latest[rec["key"]] = rec  # the last word wins (a regenerated item)
    done = sorted(latest.values(), key=lambda r: (order.get(r["key"], len(order)), r["key"]))
    _remove_stale_files(out, run_hash, done, set(order) if exact else None)
    atomic_write_bytes(out / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in done).encode())
    failed_inputs = {}
    for key, rec in failed.items():
        if key not in latest:
            failed_inputs.setdefault(rec["source"], rec["error"])
    missing = [k for k in order if k not in latest and k not in failed]
    status = ("complete" if not missing and not failed_inputs else "incomplete") if done else "nothing produced"
    summary = {"run": run_hash, "status": status, "items": len(order), "finished": len(done),
               "written": sum(r["status"] == "ok" for r in done),
               "dropped": sum(r["status"] == "dropped" for r in done),
               "below_threshold": sum(bool(r.get("below_threshold")) for r in done), "missing": len(missing),
               "missing_examples": missing[:10], "failed_inputs": [{"source": s, "error": e} for s, e in
                                                                  sorted(failed_inputs.items())],
               "empty_classes": plan.get("empty_classes", []), **aggregate(done)}
    write_json(out / SUMMARY, summary)
    for tmp in out.rglob(".*.tmp"):  # left by a writer killed between write and rename
        tmp.unlink(missing_ok=True)
    return summary


def _remove_stale_files(out: Path, run_hash: str, done: list[dict[str, Any]], plan: set[str] | None) -> None:
    """After an --overwrite: remove the images and traces that records of other runs (part files, the
    old manifest) list and this run's finished records do not, and (`plan` given) those of this run's
    records outside the plan (fewer --variants, a --limit), so `out` holds exactly this run's outputs."""
    keep = {r.get(k) for r in done for k in ("output", "trace")}
    old = [r for r in read_records(out) if r.get("run") != run_hash or (plan is not None and r["key"] not in plan)]
    if (out / MANIFEST).is_file():
        for line in (out / MANIFEST).read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("run") != run_hash:
                old.append(rec)
    for rel in {r.get(k) for r in old for k in ("output", "trace")} - keep:
        if isinstance(rel, str) and _is_output_file(out, rel):
            (out / rel).unlink()


OUTPUT_FOLDERS = ("images", "traces", "dropped")  # where a record's files live; nothing else is ever removed


def _is_output_file(out: Path, rel: str) -> bool:
    """`out/rel` is a file strictly inside OUT/images, OUT/traces or OUT/dropped after resolving (so a record
    naming 'images/../keepme.txt' or a link out of the folder is not one) and not a link itself."""
    path = out / rel
    if path.is_symlink() or not path.is_file():
        return False
    real = path.resolve()
    return any(real.is_relative_to((out / d).resolve()) and real != (out / d).resolve() for d in OUTPUT_FOLDERS)


def aggregate(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Mean final confidence and the fraction of classifier-measured steps whose backward was gated."""
    records = list(records)
    conf = [r["confidence"] for r in records if r.get("confidence") is not None]
    gated = sum(r.get("gated_steps", 0) for r in records)
    measured = sum(r.get("measured_steps", 0) for r in records)
    return {"mean_confidence": sum(conf) / len(conf) if conf else None,
            "gated_step_fraction": gated / measured if measured else None,
            "generation_seconds": sum(r.get("seconds", 0.0) for r in records)}
