"""A plan: several jobs queued as one, each step waiting for the steps whose runs it uses.

A plan preset is a TOML file under ``configs/`` with ``kind = "plan"``, a
``name`` and a list of ``[[steps]]``. Each step has:

- ``name``: unique in the plan (``teacher``);
- ``kind``: a job kind of ``engine.intake.KINDS``;
- ``preset`` (optional): the job's preset, and ``set`` (optional): ``key=value`` overrides;
- ``uses`` (optional): the settings that name runs (``JobKind.run_settings``) mapped to
  earlier steps: ``uses = { teacher_run_id = "teacher" }``,
  ``uses = { members = ["infer_a", "infer_b"] }``.

A step's run is known only once its job exists, so :func:`queue_plan`
reserves the job ids the steps will get (the next free ones) and names each
parent's run by the run id its job will write (``<kind>-<job id>``,
:func:`engine.intake.default_run_id`): a child's spec is an ordinary spec and
the worker needs no new rule. Every step goes through
:func:`engine.intake.prepare` (every queue-time check, with the runs of the
earlier steps counted as planned) before anything is queued, and all steps are
queued in one transaction (``Store.enqueue_plan``); a mistake is a
ConfigError naming the plan, the step and the field.

This module imports what ``engine.intake`` imports (the console queues plans through it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from engine import intake, presets, specs
from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.store import Store

#: The ``kind`` of a plan preset.
PLAN_KIND = "plan"
#: How often a plan is prepared again when another job took its reserved ids meanwhile.
_RESERVE_TRIES = 5


@dataclass(frozen=True)
class Step:
    """One step of a plan preset, as written."""

    name: str
    kind: str
    preset: str | None
    overrides: tuple[str, ...]
    uses: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """A plan preset: its name, the file it came from and its steps in order."""

    name: str
    source: str
    steps: tuple[Step, ...]


def plan_presets() -> dict[str, Path]:
    """Plan preset name -> file (``configs/*.toml`` with ``kind = "plan"``)."""
    return presets.list_presets(PLAN_KIND)


def load_plan(preset: str | Path) -> Plan:
    """Read and check a plan preset (a name under ``configs/`` or a file); ConfigError names step and field."""
    path = Path(preset) if str(preset).endswith(".toml") else plan_presets().get(str(preset))
    if path is None:
        known = ", ".join(sorted(plan_presets())) or "none found"
        raise ConfigError(f"unknown plan preset {str(preset)!r} (known: {known})", field="preset")
    data = presets.read_toml(path)
    if data.get("kind") != PLAN_KIND:
        raise ConfigError(f"not a plan preset (kind = {data.get('kind')!r}, expected {PLAN_KIND!r})", field="kind",
                          file=path)
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError("a plan needs a list of [[steps]]", field="steps", file=path)
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        where = f"steps[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError("expected a table", field=where, file=path)
        unknown = sorted(set(raw) - {"name", "kind", "preset", "set", "uses"})
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r} (a step has name, kind, preset, set, uses)",
                              field=f"{where}.{unknown[0]}", file=path)
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("each step needs a name", field=f"{where}.name", file=path)
        if any(s.name == name for s in steps):
            raise ConfigError(f"two steps are named {name!r}", field=f"{where}.name", file=path)
        kind = str(raw.get("kind", ""))
        try:
            intake.job_kind(kind)
        except ConfigError as err:
            raise ConfigError(f"step {name!r}: {err.reason}", field=f"{where}.kind", file=path) from None
        overrides = raw.get("set", [])
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(f"step {name!r}: expected a list of \"key=value\" strings", field=f"{where}.set",
                              file=path)
        uses = raw.get("uses", {})
        if not isinstance(uses, dict):
            raise ConfigError(f"step {name!r}: expected a table of setting = step", field=f"{where}.uses", file=path)
        settings = intake.KINDS[kind].run_settings
        for setting, target in uses.items():
            if setting not in settings:
                raise ConfigError(f"step {name!r}: a {kind} job names runs in {', '.join(settings) or 'no setting'}, "
                                  f"not {setting!r}", field=f"{where}.uses.{setting}", file=path)
            for parent in [target] if isinstance(target, str) else list(target):
                if not any(s.name == parent for s in steps):
                    raise ConfigError(f"step {name!r}: no earlier step {parent!r} (steps use the runs of steps "
                                      "above them)", field=f"{where}.uses.{setting}", file=path)
        steps.append(Step(name, kind, raw.get("preset"), tuple(overrides), dict(uses)))
    return Plan(str(data.get("name") or Path(path).stem), str(path), tuple(steps))


def _step_overrides(plan: Plan, overrides: Iterable[str]) -> dict[str, list[str]]:
    """``TARGET:key=value`` overrides by step: TARGET is a step's name, or a job kind for all its steps."""
    out: dict[str, list[str]] = {s.name: [] for s in plan.steps}
    kinds = {s.kind for s in plan.steps}
    for text in overrides:
        target, sep, rest = text.partition(":")
        if not sep or (target not in out and target not in kinds):
            raise ConfigError(f"expected STEP:key=value or KIND:key=value (steps: {', '.join(out)}; kinds: "
                              f"{', '.join(sorted(kinds))}), got {text!r}", field="--set")
        for step in plan.steps:
            if step.name == target or (target not in out and step.kind == target):
                out[step.name].append(rest)
    return out


def prepare_plan(store: "Store", plan: Plan, *, first_id: int, data_root: str | None = None,
                 overrides: Iterable[str] = (), name: str | None = None) -> list:
    """Every step through ``intake.prepare``, its parents' runs named by their reserved run ids.

    Returns the ``PlanJob`` list ``Store.enqueue_plan`` queues; ConfigError names the step and field.
    Each job is named ``step · plan name`` (``name``, default the preset's): the step first, so a
    narrow jobs column still shows it.
    """
    title = name or plan.name
    from engine.store.plans import PlanJob

    extra = _step_overrides(plan, overrides)
    run_ids: dict[str, str] = {}
    planned: dict[str, str] = {}
    jobs = []
    for position, step in enumerate(plan.steps):
        kind = intake.KINDS[step.kind]
        links = []
        for setting, target in step.uses.items():
            value = run_ids[target] if isinstance(target, str) else [run_ids[t] for t in target]
            links.append(f"{setting}={json.dumps(value)}")
        try:
            prepared = intake.prepare(store, step.kind, preset=step.preset,
                                      overrides=[*step.overrides, *links, *extra[step.name]],
                data_root=data_root if kind.takes_data_root else None, planned=planned)
        except ConfigError as err:
            where = f"plan {plan.name!r}, step {step.name!r}" + (f" ({err.file})" if err.file else "")
            raise ConfigError(err.reason, field=err.field, file=where) from None
        run_id = intake.default_run_id(step.kind, first_id + position)
        run_ids[step.name] = run_id
        planned[run_id] = step.kind
        parents = tuple(dict.fromkeys(t for target in step.uses.values()
                                      for t in ([target] if isinstance(target, str) else target)))
        jobs.append(PlanJob(step.name, step.kind, specs.to_dict(prepared.spec), f"{step.name} · {title}",
                            parents=parents, after=intake.parent_jobs(store, prepared)))
    return jobs


def queue_plan(store: "Store", preset: str | Path, *, data_root: str | None = None,
               overrides: Iterable[str] = (), name: str | None = None, priority: int = 0) -> int:
    """Check every step, then queue the plan in one transaction; return the plan's id.

    ``name`` names the plan (default: the preset's ``name``); ``priority`` is every step's job priority.
    """
    from engine.store.plans import ReservationMoved

    plan = load_plan(preset)
    overrides = list(overrides)
    for _ in range(_RESERVE_TRIES):
        first_id = store.next_job_id()
        jobs = prepare_plan(store, plan, first_id=first_id, data_root=data_root, overrides=overrides, name=name)
        try:
            return store.enqueue_plan(name or plan.name, str(preset), jobs, first_id=first_id, priority=priority)
        except ReservationMoved:
            continue
    raise ConfigError("other jobs kept taking the plan's job ids; queue it again", field="preset")


__all__ = ["PLAN_KIND", "Plan", "Step", "load_plan", "plan_presets", "prepare_plan", "queue_plan"]
