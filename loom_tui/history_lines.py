"""The History table's lines: a page of runs as the store gives it (newest first, by keyset on
(started_at, run_id)), with the runs of each shard group gathered under one summed line, the
way `loom runs` shows them.

A group's lines sit where its newest run of the page is, and hold every run of the group,
also runs of other pages. So a line cannot be its own paging anchor: each remembers `newest`,
the run whose place it took, and `oldest`, the oldest run of the page it stands for (it grows
over the group runs that come after it in the page and are shown elsewhere). The table asks for
the page before its first line's `newest` and after its last line's `oldest`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from core.api import MonitoringAlert, PipelineRun, ShardGroup

Position = tuple[datetime, str]  # (started_at, run_id): the keyset of the runs listing


@dataclass(frozen=True)
class Line:
    key: Hashable
    item: PipelineRun | ShardGroup  # a run, or a group's summed line
    newest: Position
    oldest: Position
    alerts: tuple[MonitoringAlert, ...] = ()  # a group's line: every one of its runs' alerts
    shard: str = ""  # a group's run: "├" or "└" (the tree drawn in the run column)
    retried: bool = False  # a group's run that a newer attempt of its shard replaced

    def runs(self) -> list[PipelineRun]:
        return list(self.item.runs) if isinstance(self.item, ShardGroup) else [self.item]

    def with_alerts(self, alerts: Mapping[str, Sequence[MonitoringAlert]]) -> "Line":
        """This line with the alerts of the runs in `alerts` replaced by those."""
        kept = tuple(a for a in self.alerts if a.run_id not in alerts)
        fresh = tuple(a for run in self.runs() for a in alerts.get(run.run_id, ()))
        return replace(self, alerts=kept + fresh)

    def widened(self, *, newest: Position | None = None, oldest: Position | None = None) -> "Line":
        """The same line standing for the listing up to `newest` and down to `oldest` too (the
        runs between are shown elsewhere in the window)."""
        return replace(self, newest=max(self.newest, newest) if newest else self.newest,
                       oldest=min(self.oldest, oldest) if oldest else self.oldest)


def line_key(item: Any) -> Hashable:
    if isinstance(item, ShardGroup):
        return ("group", item.pipeline, item.group)
    return item.run_id


def position(run: PipelineRun) -> Position:
    return (run.started_at, run.run_id)


def gather(page: Sequence[PipelineRun], groups: Mapping[tuple[str, str], ShardGroup],
           alerts: Mapping[str, Sequence[MonitoringAlert]]) -> list[Line]:
    """The lines for one page of runs (newest first). `groups` holds every group a run of
    the page belongs to (Workspace.shard_groups), `alerts` every shown run's alerts."""
    lines: list[Line] = []
    shown: set[tuple[str, str]] = set()
    for run in page:
        here = position(run)
        if run.shard_group is None:
            lines.append(Line(run.run_id, run, here, here, tuple(alerts.get(run.run_id, ()))))
            continue
        key = (run.pipeline_name, run.shard_group)
        if key in shown:
            # Already gathered above: the line before takes its place in the paging.
            lines[-1] = replace(lines[-1], oldest=here)
            continue
        shown.add(key)
        group = groups[key]
        runs = shard_order(group)
        counted = {member.run_id for member in group.counted}
        raised = tuple(a for member in runs for a in alerts.get(member.run_id, ()))
        lines.append(Line(line_key(group), group, here, here, raised))
        # A run of the group stands just above where its group line does: paging up from it
        # (the group line scrolled out of the window) brings the group line back.
        above = (here[0], "")
        for n, member in enumerate(runs):
            lines.append(Line(member.run_id, member, above, here,
                              tuple(alerts.get(member.run_id, ())),
                              shard="└" if n == len(runs) - 1 else "├",
                              retried=member.run_id not in counted))
    return lines


def shard_order(group: ShardGroup) -> list[PipelineRun]:
    """A group's runs by shard index, each index's attempts oldest first (as `loom runs`)."""
    return sorted(group.runs, key=lambda r: (r.shard_index or 0, r.started_at, r.run_id))


def shown_runs(page: Sequence[PipelineRun],
               groups: Mapping[tuple[str, str], ShardGroup]) -> list[str]:
    """Every run the page's lines show (its own runs and all runs of its groups)."""
    ids = {run.run_id for run in page}
    for group in groups.values():
        ids.update(run.run_id for run in group.runs)
    return sorted(ids)


def unacknowledged(alerts: Sequence[MonitoringAlert]) -> list[MonitoringAlert]:
    return [alert for alert in alerts if not alert.acknowledged]


SEVERITY_RANK = {"critical": 0, "error": 1, "warning": 2}


def worst(alerts: Sequence[MonitoringAlert]) -> str | None:
    """The most severe of these alerts' severities (critical, error, warning), or None."""
    if not alerts:
        return None
    return min((alert.severity for alert in alerts), key=lambda s: SEVERITY_RANK.get(s, 3))
