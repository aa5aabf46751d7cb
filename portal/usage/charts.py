"""A bar chart of daily usage, drawn as SVG on the server so it needs no JavaScript."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from portal.models import DicomIdentity
from portal.usage.queries import DailyPoint, daily_series

WIDTH = 720
HEIGHT = 180
MARGIN_LEFT = 40
MARGIN_BOTTOM = 24
PLOT_HEIGHT = HEIGHT - MARGIN_BOTTOM - 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    association_bars: list[Bar]
    instance_bars: list[Bar]
    maximum: int
    baseline: float
    first_day: str
    last_day: str
    points: list[DailyPoint]


def daily_chart(session: Session, identity: DicomIdentity, days: int = 30) -> Chart:
    points = daily_series(session, identity, days)
    maximum = max([1, *(point.associations for point in points), *(point.instances for point in points)])
    slot = (WIDTH - MARGIN_LEFT) / len(points)
    bar_width = max(1.0, slot / 2 - 1)
    baseline = HEIGHT - MARGIN_BOTTOM

    def bar(index: int, value: int, offset: float, noun: str, day) -> Bar:
        height = PLOT_HEIGHT * value / maximum
        return Bar(MARGIN_LEFT + index * slot + offset, baseline - height, bar_width, height,
                   f"{day.isoformat()}: {value} {noun}")

    return Chart(
        width=WIDTH,
        height=HEIGHT,
        association_bars=[bar(i, p.associations, 0, "associations", p.day) for i, p in enumerate(points)],
        instance_bars=[bar(i, p.instances, bar_width + 1, "instances", p.day) for i, p in enumerate(points)],
        maximum=maximum,
        baseline=baseline,
        first_day=points[0].day.isoformat(),
        last_day=points[-1].day.isoformat(),
        points=points,
    )
