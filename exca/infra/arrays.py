"""Job arrays: many configs of one decorated method sent as ONE array of their missing work."""

from __future__ import annotations

import dataclasses
import logging
import typing as tp
from pathlib import Path

from ..graph import store
from ..graph.scheduler import Scheduler, note_array_jobs

if tp.TYPE_CHECKING:
    from .task import TaskInfra

logger = logging.getLogger("exca")


def submit_array(
    array_infra: TaskInfra,
    tasks: list[tp.Any],
    max_workers: int,
    allow_empty: bool,
    allow_repeated_tasks: bool,
) -> None:
    """Submit the tasks that need work as one array with the array infra's settings."""
    if not tasks:
        if allow_empty:
            return
        raise RuntimeError("Nothing was added to the job array (use allow_empty=True to allow it)")
    if max_workers < 1:
        raise ValueError(f"job_array(max_workers={max_workers}): give at least 1")
    method = array_infra._method()
    owner_cls = method.owner or type(array_infra._owner())  # (the class defining it)
    # (by folder and uid: one config in two cache folders is two results to compute)
    infras: dict[tuple[str | None, str], TaskInfra] = {}
    for task in tasks:
        if not isinstance(task, owner_cls):
            kind = type(task)
            redefined = (kind.__qualname__, kind.__module__) == (
                owner_cls.__qualname__,
                owner_cls.__module__,
            )
            hint = (
                f" (a class {kind.__name__} defined again, e.g. a notebook cell run again "
                "after the array's config was made: make that config again too)"
                if redefined
                else ""
            )
            raise TypeError(
                f"The job array of {owner_cls.__name__}.{method.name} holds configs of that "
                f"class (or subclasses), got {kind.__name__}{hint}: append "
                f"{owner_cls.__name__}(...) objects (e.g. infra.clone_obj({{...}}))"
            )
        infra = tp.cast("TaskInfra", method.infra_of(task))
        if infra.folder is None and array_infra.cluster is not None:
            raise ValueError(
                f"A config of the job array of {owner_cls.__name__}.{method.name} has no "
                f"folder (infra.folder): its job would compute a result kept nowhere "
                f"({infra.uid()}). Append configs made from the array's own, e.g. "
                f"base.infra.clone_obj({{...}}), or give them a folder"
            )
        uid = infra.uid()
        key = (None if infra.folder is None else str(infra.folder), uid)
        if key in infras:
            if not allow_repeated_tasks and infras[key]._owner() is task:
                raise ValueError(
                    f"Job array contains the same object twice (uid {uid}): append a new "
                    "config for each task, e.g. base.infra.clone_obj({...}) with its values "
                    "(changing one object between appends changes every entry)"
                )
            if not allow_repeated_tasks:
                raise ValueError(
                    f"Job array contains the same config twice (uid {uid}):\n"
                    f"{infras[key].config(uid=False, exclude_defaults=True).to_yaml()}---\n"
                    f"{infra.config(uid=False, exclude_defaults=True).to_yaml()}"
                    "(use allow_repeated_tasks=True to deduplicate them)"
                )
            logger.warning("Job array: dropping a repeated config %s", uid)
            continue
        infras[key] = infra
    requested = mode = array_infra.mode
    if mode == "force" and array_infra._runtime().force_state.get("done"):
        mode = "cached"  # this base forced its array once already: its tasks are reused
        for infra in infras.values():
            _forced(infra)  # (clones of the base are in mode force, not yet applied)
    # one scheduler for all (cluster=None: computed here, one after the other; a failure
    # is cached, job().result() raises it): a sub-config they share is one node
    step = array_infra._step_name()
    folder = None if array_infra.folder is None else Path(array_infra.folder) / step
    owner = type(array_infra._owner()).__name__
    execution = array_infra._execution(
        logs_folder=folder,
        job_name=step[step.find(owner) :],
        workdir_folder=array_infra._workdir_folder(step),
    )
    nodes = [
        dataclasses.replace(i._node(), mode=mode, execution=execution) for i in infras.values()
    ]
    outdated = {n.key: store.outdated_outcome(n.cache, mode) for n in nodes}
    scheduler = Scheduler(nodes)
    try:
        handles = scheduler.submit(parallelism=max_workers, keep_going=True)
    except KeyboardInterrupt:
        _log_interrupted(scheduler)
        raise
    # (a call waiting for one of them, interrupted, says the others run on too)
    note_array_jobs([h for node in nodes for h in handles.get(node.key) or ()])
    for node in nodes:  # (else, until its job starts, a task shows its old outcome)
        if handles.get(node.key):  # (not submitted, e.g. its sub-config failed: kept)
            store.drop_outcome(node.cache, outdated[node.key])
    _log_not_submitted(scheduler, nodes, handles)
    _log_unloaded_before(nodes, handles)
    if requested in ("force", "retry"):
        for infra in [array_infra, *infras.values()]:
            _forced(infra)
            infra.__dict__["mode"] = "cached"  # (SPEC §8: force/retry revert to cached)
    if requested == "force":  # (a call waits for it: an earlier job may write meanwhile)
        for infra, node in zip(infras.values(), nodes):
            submitted = handles.get(node.key)
            if submitted:
                infra._runtime().force_state["job"] = submitted[0].job_id


def _log_interrupted(scheduler: tp.Any) -> None:
    """Say which jobs an interrupted array submission leaves queued (an array does not
    cancel its jobs: a new array, or a call, follows them)."""
    ids = sorted(
        {
            h.job_id.split("_")[0]
            for run in scheduler.runs.values()
            for h in run.handles
            if h.cluster == "slurm"  # (local ones it started are cancelled: executors)
        }
    )
    if ids:
        logger.warning(
            "Job array interrupted: job(s) %s, submitted before the interruption, stay "
            "queued (scancel them to stop them; an array of the same configs follows them)",
            ", ".join(ids),
        )


def _log_not_submitted(
    scheduler: tp.Any, nodes: list[tp.Any], handles: dict[tp.Any, tp.Any]
) -> None:
    """Say which configs of the array were not submitted for a failure before their job
    (a sub-config whose computation failed; a result cached with other class defaults, or
    that cannot be read): their status stays "not submitted", or says "failed"."""
    failed = [
        run
        for node in nodes
        if not handles.get(node.key)
        and (run := scheduler.runs.get(node.key)) is not None
        # (failed because an upstream failed, or at decision time; not its own cached
        # error, left alone by design: mode retry resubmits it)
        and (run.blocked or (run.action == "fail" and not run.holds_error))
    ]
    if failed:
        logger.warning(
            "Job array: %d config(s) not submitted:\n%s",
            len(failed),
            "\n".join(f"  - {run.node.uid}: {run.reason}" for run in failed),
        )
    # (their own cached error, or a job that ended without a result: failed, as their
    # status says; said as the configs computed elsewhere are, else a rerun is silent)
    cached = [
        run
        for node in nodes
        if not handles.get(node.key)
        and (run := scheduler.runs.get(node.key)) is not None
        and run.action == "fail"
        and run.holds_error
        and not run.blocked
    ]
    if cached:
        logger.info(
            "Job array: %d config(s) failed before (an error cached, or a job ended without "
            "its result; e.g. %s): not submitted again (use mode='retry' to recompute)",
            len(cached),
            cached[0].node.uid,
        )


def _last_job_unloaded(
    folder: Path | None, uid: str, new: tp.Collection[str]
) -> tuple[str, str] | None:
    """(job id, why) when the last job recorded for a config folder before the ``new``
    ones (this submission's job ids) could not load the config (its module not
    importable in the job: jobprocess.ConfigImportError), which set its record aside and
    cached nothing (its status reads "not submitted" again), else None."""
    from ..graph import registry
    from ..graph.errors import CONFIG_UNIMPORTABLE
    from ..graph.executors import read_tail

    records = [r for r in registry.read_all(folder, refused=True) if r.job_id not in new]
    if not records or not records[-1].refused:
        return None
    job = records[-1]
    try:
        text = read_tail(job.stderr)
    except OSError:  # (its log removed: why is unknown, e.g. a class edited meanwhile)
        return None
    lines = [line for line in text.splitlines() if CONFIG_UNIMPORTABLE in line]
    if not lines:  # (refused for another reason: a class changed, a KeyboardInterrupt)
        return None
    why = lines[-1].split(CONFIG_UNIMPORTABLE, 1)[1].strip()
    why = why.split(": ", 1)[1] if why.startswith(f"{uid}: ") else why  # (named already)
    return job.job_id, why if len(why) <= 600 else why[:600] + " [...]"


def _log_unloaded_before(nodes: list[tp.Any], handles: dict[tp.Any, tp.Any]) -> None:
    """Say which configs submitted now were refused by their last job, which could not
    load them: an array does not wait for its jobs, so that refusal (nothing cached, the
    status "not submitted" again) was said to nobody, and the same array submitted again
    was refused again, silently, until its results were asked for. Only the records of
    the configs submitted are read (an array of 10k configs, all cached, reads none)."""
    again = []
    for node in nodes:
        submitted = handles.get(node.key)
        if submitted:  # (its jobs of now set aside: their records are not the last before)
            new = {h.job_id for h in submitted}
            unloaded = _last_job_unloaded(node.folder, node.uid, new)
            if unloaded is not None:
                again.append((node, unloaded))
    if not again:
        return
    first, (job_id, why) = again[0]
    logger.warning(
        "Job array: the last job of %d config(s) submitted now could not load it (nothing "
        "cached: status 'not submitted'), e.g. job %s of %s: %s\nSubmitted again: their "
        "jobs refuse them again unless the jobs' environment changed since",
        len(again),
        job_id,
        first.uid,
        why,
    )


def _forced(infra: TaskInfra) -> None:
    """Mark an infra's force as applied: its next calls read what the array computed."""
    runtime = infra._runtime()
    runtime.force_state["done"] = True
    runtime.node = None
