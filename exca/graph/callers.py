"""The callers a job works for: a job computes what a call of another process (or of
another job) waits for. Each job is given the chain of those waiting callers; a wait on
one of them (its claim, or its job) would never end, so it is refused. Without jobs, a
decorated method calling itself is refused by its claim (held by this very thread)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import typing as tp
from pathlib import Path

from ..storage.claims import CLAIM_SUFFIX, Claims, Owner, slurm_job_id
from ..storage.process import unique_name_time
from .errors import caller_cycle_error


class Caller(tp.NamedTuple):
    """A thread waiting for a job's end: who it is, the jobs it runs in, and since when
    (a claim it took later, after a Ctrl-C ended its wait, is not waited for by us)."""

    owner: Owner
    jobs: tuple[str, ...]
    since: float


_INHERITED: list[Caller] = []  # in a job's process: the callers of its job


class _Acting(threading.local):
    caller: Caller | None = None  # the thread this one submits jobs for (see acting_for)


_ACTING = _Acting()


@contextlib.contextmanager
def acting_for(caller: Caller) -> tp.Iterator[None]:
    """In a thread submitting jobs on behalf of ``caller`` (a run's thread busy with inline
    work, which waits for them afterwards): that caller is the one of the jobs, and its
    claims are the ones "held here" (``thread_id``)."""
    _ACTING.caller = caller
    try:
        yield
    finally:
        _ACTING.caller = None


def acting() -> bool:
    """Whether this thread submits jobs on behalf of another one (see acting_for)."""
    return _ACTING.caller is not None


def thread_id() -> int:
    """The native id of the thread whose claims count as this thread's own (its own, or
    the one it submits for)."""
    acting = _ACTING.caller
    return threading.get_native_id() if acting is None else acting.owner.thread


def current() -> Caller:
    """This thread, as a caller of the jobs it submits and waits for (or the caller it
    submits for: see acting_for)."""
    if _ACTING.caller is not None:
        return _ACTING.caller
    environ = os.environ
    ids = (environ.get("SUBMITIT_LOCAL_JOB_ID"), environ.get("SLURM_JOB_ID"), slurm_job_id())
    return Caller(Owner.current(), tuple(dict.fromkeys(i for i in ids if i)), time.time())


def for_job() -> tuple[Caller, ...]:
    """The callers of a job this thread submits and waits for: this thread and its own."""
    return (*_INHERITED, current())


def adopt(chain: tp.Sequence[Caller]) -> None:
    """In a job's process: the callers of its job (given with its unit)."""
    _INHERITED[:] = chain


def chained() -> bool:
    """Whether this process runs a job that callers wait for."""
    return bool(_INHERITED)


def _same_thread(owner: Owner, other: Owner) -> bool:
    return owner[:4] == other[:4]  # host, pid, process start, thread


def refuse_waiting_on_claims(uid: str, folder: Path | None, keys: tp.Iterable[str]) -> None:
    """Raise if a claim on these keys is held by a caller of this job, taken before it
    submitted the job (it waits for us)."""
    if not _INHERITED or folder is None:
        return
    wanted = set(keys)
    for claim in Claims(folder).current():
        if not claim.keys & wanted:
            continue
        created = unique_name_time(claim.path.name[: -len(CLAIM_SUFFIX)])
        for caller in _INHERITED:
            if _same_thread(claim.owner, caller.owner) and (created or 0) <= caller.since:
                raise caller_cycle_error(uid, claim.owner.describe())


def caller_job(job_id: str) -> str | None:
    """The job id if one of this job's callers runs in that job (it waits for us)."""
    return job_id if any(job_id in caller.jobs for caller in _INHERITED) else None


def refuse_waiting_on_caller_jobs(runs: tp.Iterable[tp.Any]) -> None:
    """Raise if a run about to wait would wait for a job of this job's callers."""
    for run in runs:
        if run.caller_job is not None and run.action == "wait":
            raise caller_cycle_error(run.node.uid, f"job {run.caller_job}")
