"""Check requested resources against the Slurm cluster before anything is queued.

"It queued 500 jobs on a partition that does not exist" becomes one error, raised before
any sbatch, listing every problem: unknown partition, CPUs / GPUs / memory that no node
of the partition has, a time limit above the partition's, an unknown constraint,
account or qos. Cluster facts come from ``scontrol`` / ``sacctmgr`` once per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import math
import re
import subprocess
import time
import typing as tp

from .node import Execution

TIMEOUT = 20


class ResourceError(ValueError):
    """Requested resources do not fit the cluster (nothing was submitted)."""


@dataclasses.dataclass
class SlurmNode:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    features: set[str]
    partitions: set[str]


@dataclasses.dataclass
class SlurmPartition:
    name: str
    default: bool
    max_time_min: int | None  # None: unlimited
    nodes: list[str]


@dataclasses.dataclass
class SlurmCluster:
    partitions: dict[str, SlurmPartition]
    nodes: dict[str, SlurmNode]
    max_array_size: int
    accounts: set[str] | None  # None: unknown (no accounting)
    qos: set[str] | None

    @property
    def default_partition(self) -> str | None:
        return next((p.name for p in self.partitions.values() if p.default), None)


def _run(*command: str) -> str:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def slurm_minutes(text: str) -> int | None:
    """Slurm time text in minutes, rounded up (None: ``UNLIMITED``). As sbatch reads it:
    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` (ValueError otherwise)."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "NONE"):
        return None
    days, _, clock = text.rpartition("-")
    fields = clock.split(":") if clock or not days else ["0"]  # ("1-": sbatch reads 1 day)
    # (digits only: int() took "+3", " 5", "1_0", which sbatch refuses)
    if len(fields) > 3 or not all(f.isascii() and f.isdigit() for f in [*fields, days or "0"]):
        raise ValueError(f"not a Slurm time: {text!r}")
    parts = [int(p) for p in fields]
    if days:  # (after a day count, hours come first)
        hours, minutes, seconds = [*parts, 0, 0][:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # M or M:S
        hours, minutes, seconds = 0, parts[0], (parts[1:] or [0])[0]
    return int(days or 0) * 1440 + hours * 60 + minutes + -(-seconds // 60)


def _gpus(gres: str) -> int:
    total = 0
    for match in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres or ""):
        total += int(match.group(1))
    return total


# a read no controller answered is kept this long (each costs up to TIMEOUT per command;
# a plan checks every node): then read again, the controller may be back
UNANSWERED_KEPT_S = 60.0
_unanswered: list[tuple[float, SlurmCluster]] = []


def cluster() -> SlurmCluster:
    """What this Slurm cluster offers: read once per process once a controller answered
    (a read none answered is kept for a minute only)."""
    if _unanswered and time.monotonic() - _unanswered[0][0] < UNANSWERED_KEPT_S:
        return _unanswered[0][1]
    found = _read_cluster()
    if not found.partitions:
        _read_cluster.cache_clear()
        _unanswered[:] = [(time.monotonic(), found)]
    else:
        _unanswered.clear()
    return found


@functools.cache
def _read_cluster() -> SlurmCluster:
    partitions = {}
    listing = _run("scontrol", "show", "partition", "-o")
    if not listing:  # (no controller: the other commands would wait as long for nothing)
        return SlurmCluster({}, {}, 1001, None, None)
    for line in listing.splitlines():
        fields = _fields(line)
        name = fields.get("PartitionName")
        if not name:
            continue
        listed = _expand_nodes(fields.get("Nodes", ""))
        partitions[name] = SlurmPartition(
            name, fields.get("Default") == "YES", slurm_minutes(fields.get("MaxTime", "")), listed
        )
    nodes: dict[str, SlurmNode] = {}
    for line in _run("scontrol", "show", "node", "-o").splitlines():
        fields = _fields(line)
        name = fields.get("NodeName")
        if not name:
            continue
        nodes[name] = SlurmNode(
            name=name,
            cpus=int(fields.get("CPUTot", "0") or 0),
            memory_mb=int(fields.get("RealMemory", "0") or 0),
            gpus=_gpus(fields.get("Gres", "")),
            features=set(
                filter(None, fields.get("AvailableFeatures", "").replace("(null)", "").split(","))
            ),
            partitions=set(fields.get("Partitions", "").split(",")),
        )
    for partition in partitions.values():  # "Nodes=ALL" or host ranges: use the nodes' own view
        partition.nodes = [n for n, node in nodes.items() if partition.name in node.partitions]
    max_array = 1001
    for line in _run("scontrol", "show", "config").splitlines():
        if line.strip().startswith("MaxArraySize"):
            try:
                max_array = int(line.split("=", 1)[1])
            except ValueError:
                pass
    accounts: set[str] | None = None
    qos: set[str] | None = None
    assoc = _run(
        "sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}", "format=account,qos"
    )
    if assoc.strip():
        accounts, qos = set(), set()
        for line in assoc.splitlines():
            account, _, qos_list = line.partition("|")
            if account:
                accounts.add(account)
            qos.update(q for q in qos_list.split(",") if q)
        if not qos:
            qos = None
    return SlurmCluster(partitions, nodes, max_array, accounts, qos)


def _expand_nodes(text: str) -> list[str]:
    return [n for n in text.split(",") if n and n != "(null)"]


def unreadable() -> str | None:
    """Why the cluster's facts cannot be read now (no controller answered), or None."""
    if cluster().partitions:
        return None
    return (
        "no Slurm controller answered `scontrol show partition` (is it up? `sinfo` tells): "
        "the resources were not checked"
    )


# sbatch options given in slurm_additional_parameters that request what fields do
_OPTION_FIELDS = {
    "partition": "slurm_partition",
    "cpus_per_task": "cpus_per_task",
    "ntasks_per_node": "tasks_per_node",
    "nodes": "nodes",
    "gpus_per_node": "gpus_per_node",
    "constraint": "slurm_constraint",
    "account": "slurm_account",
    "qos": "slurm_qos",
}


_MEM_UNITS_GB = {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


def _add_sbatch_options(params: dict[str, tp.Any]) -> dict[str, str]:
    """Resources requested through slurm_additional_parameters are checked as the
    fields are (an impossible one there left its job pending for good). Returns how
    the options in other units than their field's were written, for the messages."""
    from .executors import sbatch_options  # (the spelling the job's executor gets)

    extra = sbatch_options(params.get("slurm_additional_parameters") or {})
    for option, field in _OPTION_FIELDS.items():
        value = extra.get(option)
        if value is None:  # (else it is what sbatch gets: it replaces the field's option)
            continue
        if field.startswith("slurm_"):
            params[field] = str(value)
        elif str(value).isdigit():  # (e.g. "2-4" nodes: a range, left to sbatch)
            params[field] = int(value)
    shown: dict[str, str] = {}
    time_limit = extra.get("time")
    if time_limit is not None:  # (sbatch's units: minutes, or [D-]H:M:S...)
        with contextlib.suppress(ValueError):  # (not a time: left to sbatch)
            minutes = slurm_minutes(str(time_limit))  # (None: UNLIMITED, beyond any limit)
            # (0 too: sbatch reads --time=0 as UNLIMITED)
            params["timeout_min"] = minutes or math.inf
            shown["timeout_min"] = f"time={time_limit!r} in slurm_additional_parameters"
    mem = _mem_gb(extra.get("mem"))
    if mem is not None:
        params["mem_gb"] = mem
        shown["mem_gb"] = f"mem={extra['mem']!r} in slurm_additional_parameters"
        if not params["mem_gb"]:  # (0: all of a node's memory, whatever it is)
            del params["mem_gb"]
    # memory per CPU / per GPU: what a node must hold is that times the node's CPUs / GPUs
    counts = {
        "cpu": (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1),
        "gpu": params.get("gpus_per_node") or 0,
    }
    for unit, count in counts.items():
        option = f"mem_per_{unit}"
        per = _mem_gb(extra.get(option))
        if per and count and "mem_gb" not in shown:
            params["mem_gb"] = per * count
            shown["mem_gb"] = (
                f"{option.replace('_', '-')}={extra[option]!r} in slurm_additional_parameters "
                f"(x {count} {unit.upper()}s: {_gb(round(per * count, 3))} GB per node)"
            )
    return shown


def _memory_options_conflict(params: dict[str, tp.Any]) -> list[str]:
    """sbatch refuses more than one of --mem, --mem-per-cpu, --mem-per-gpu (submitit
    writes mem_gb's --mem next to the options given)."""
    from .executors import sbatch_options

    extra = sbatch_options(params.get("slurm_additional_parameters") or {})
    given = [
        f"{k.replace('_', '-')}={extra[k]!r}" for k in ("mem_per_cpu", "mem_per_gpu") if k in extra
    ]
    if "mem" in extra:
        given.insert(0, f"mem={extra['mem']!r}")
    elif params.get("mem_gb") is not None:
        given.insert(0, f"mem_gb={_gb(params['mem_gb'])}")
    if len(given) < 2:
        return []
    return [
        f"{' and '.join(given)}: sbatch takes only one of --mem, --mem-per-cpu and "
        "--mem-per-gpu; give one (leave mem_gb=None with a per-CPU or per-GPU amount)"
    ]


def _mem_gb(value: tp.Any) -> float | None:
    """A memory amount in sbatch's units (MB, or a K/M/G/T suffix) in GB (None: not one)."""
    mem = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", str(value or "").strip().upper())
    return float(mem.group(1)) * _MEM_UNITS_GB[mem.group(2) or "M"] if mem else None


SLURM_TIME_FORMATS = (
    "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED (e.g. 90, '1:30:00', "
    "'2-00:00:00')"
)


def time_problem(params: dict[str, tp.Any]) -> str | None:
    """A ``time`` in slurm_additional_parameters that sbatch cannot read (it refuses the
    job, naming only --time), else None."""
    time_limit = (params.get("slurm_additional_parameters") or {}).get("time")
    if time_limit is None or (isinstance(time_limit, int) and not isinstance(time_limit, bool)):
        return None
    try:
        slurm_minutes(str(time_limit))
    except ValueError:
        return (
            f"time={time_limit!r} in slurm_additional_parameters is not a time Slurm can read: "
            f"give {SLURM_TIME_FORMATS}"
        )
    return None


def problems(
    execution: Execution, elements: int = 1, info: SlurmCluster | None = None
) -> list[str]:
    """What in an execution's resources does not fit the cluster ([] when all is fine)."""
    params = {k: v for k, v in execution.params if v is not None}
    unreadable_time = time_problem(params)  # (whatever the cluster: sbatch refuses it)
    info = info or cluster()
    if not info.partitions:
        return [unreadable_time] if unreadable_time else []  # (no cluster facts: sbatch says)
    found: list[str] = _memory_options_conflict(params)
    if unreadable_time:
        found.insert(0, unreadable_time)
    shown = _add_sbatch_options(params)
    name = params.get("slurm_partition") or info.default_partition
    # (a list "a,b": Slurm starts the job in whichever can run it first)
    names = list(dict.fromkeys(n for n in str(name).split(",") if n)) if name else []
    for absent in (n for n in names if n not in info.partitions):
        found.append(
            f"partition {absent!r} does not exist (partitions: "
            f"{', '.join(sorted(info.partitions))})"
        )
    partitions = [info.partitions[n] for n in names if n in info.partitions]
    # the job runs in one partition, with all its resources there: each is checked on
    # its own (pooled, "gpu,long" passed gpus found in one and a time limit in the other)
    per_partition = [
        _fit(params, shown, [info.nodes[n] for n in p.nodes if n in info.nodes], p)
        for p in partitions
    ] or [_fit(params, shown, list(info.nodes.values()), None)]
    if len(per_partition) == 1:
        found.extend(per_partition[0])
    elif all(per_partition):
        listed = ", ".join(repr(p.name) for p in partitions)
        found.append(
            f"no single partition of {listed} fits (the job runs in one of them): "
            + "; ".join(p for why in per_partition for p in why)
        )
    account = params.get("slurm_account")
    if account and info.accounts is not None and account not in info.accounts:
        found.append(
            f"slurm_account={account!r} is not one of your accounts ({', '.join(sorted(info.accounts))})"
        )
    qos = params.get("slurm_qos")
    if qos and info.qos is not None and qos not in info.qos:
        found.append(f"slurm_qos={qos!r} is not available to you ({', '.join(sorted(info.qos))})")
    return found


def _fit(
    params: dict[str, tp.Any],
    shown: dict[str, str],
    nodes: list[SlurmNode],
    partition: SlurmPartition | None,
) -> list[str]:
    """Why the requested resources do not fit one partition (None: the whole cluster);
    ``shown``: how the user wrote a resource given in other units than its field's."""
    if not nodes:
        return []  # (its nodes unknown: let sbatch speak)
    where = f"partition {partition.name!r}" if partition is not None else "the cluster"
    max_time_min = partition.max_time_min if partition is not None else None
    found: list[str] = []
    cpus = (params.get("cpus_per_task") or 1) * (params.get("tasks_per_node") or 1)
    best_cpus = max(n.cpus for n in nodes)
    if cpus > best_cpus:
        found.append(
            f"cpus_per_task x tasks_per_node = {cpus} but nodes of {where} have at most {best_cpus} CPUs"
        )
    gpus = params.get("gpus_per_node") or 0
    best_gpus = max(n.gpus for n in nodes)
    if gpus > best_gpus:
        found.append(f"gpus_per_node={gpus} but nodes of {where} have at most {best_gpus} GPUs")
    mem = params.get("mem_gb")
    best_mem = max(n.memory_mb for n in nodes)
    if mem is not None and best_mem and mem * 1024 > best_mem:
        asked = shown.get("mem_gb", f"mem_gb={_gb(mem)}")
        found.append(f"{asked} but nodes of {where} have at most {best_mem / 1024:.1f} GB")
    nodes_wanted = params.get("nodes") or 1
    if nodes_wanted > len(nodes):
        found.append(f"nodes={nodes_wanted} but {where} has {len(nodes)} node(s)")
    timeout = params.get("timeout_min")
    if timeout is not None and max_time_min is not None and timeout > max_time_min:
        asked = shown.get("timeout_min", f"timeout_min={timeout}")
        found.append(f"{asked} exceeds the time limit of {where} ({max_time_min} min)")
    constraint = params.get("slurm_constraint")
    wanted: set[str] = set()
    if constraint:
        features = set().union(*(n.features for n in nodes))
        # operators & | , [ ] ( ) and counts like "*2" separate feature names
        wanted = {re.sub(r"\*\d+$", "", f) for f in re.split(r"[&|,\[\]()]+", constraint)} - {""}
        unknown = wanted - features
        if unknown:
            found.append(
                f"slurm_constraint={constraint!r}: no node of {where} has feature(s) {sorted(unknown)} "
                f"(features: {sorted(features) or 'none'})"
            )
    if not found:  # each resource is on some node: are they on the same ones?
        # (features all wanted on each node: "a&b" or one name; "a|b" and the like, lenient)
        every = wanted if constraint and not re.search(r"[|\[\]()*,]", constraint) else set()
        able = [
            n
            for n in nodes
            if n.cpus >= cpus and n.gpus >= gpus and _has_mem(n, mem) and every <= n.features
        ]
        if len(able) < nodes_wanted:
            need = f"{cpus} CPUs, {gpus} GPUs" + (f" and {_gb(mem)} GB" if mem else "")
            if every:
                need += f" with feature(s) {sorted(every)}"
            found.append(
                f"no node of {where} has {need} together"
                if nodes_wanted == 1
                else f"nodes={nodes_wanted} with {need} each but {len(able)} node(s) of {where} have them"
            )
    return found


def _has_mem(node: SlurmNode, mem_gb: float | None) -> bool:
    return not (mem_gb and node.memory_mb and mem_gb * 1024 > node.memory_mb)  # (0: unknown)


def _gb(mem_gb: float) -> float | int:
    return int(mem_gb) if float(mem_gb).is_integer() else mem_gb  # (the field is a float)


def check(requests: tp.Sequence[tuple[str, Execution, int]]) -> None:
    """Raise one ResourceError listing every problem of (node uid, execution, array
    elements) requests, before anything is submitted."""
    lines: list[str] = []
    groups: dict[str, list[str]] = {}  # uids per resource set: its problems listed once
    found: dict[str, list[str]] = {}
    for uid, execution, elements in requests:
        key = execution.group_key
        if key not in found:
            found[key] = problems(execution, elements)
        groups.setdefault(key, []).append(uid)
    for key, uids in groups.items():
        more = f" (and {len(uids) - 1} more with these resources)" if len(uids) > 1 else ""
        for problem in found[key]:
            lines.append(f"  - {uids[0]}{more}: {problem}")
    if lines:
        raise ResourceError(
            "Requested Slurm resources do not fit the cluster; nothing was submitted:\n"
            + "\n".join(lines)
        )
