"""The per-class table of class-query metrics, base against candidate, as curated collections are judged.

One row per class: the class, its number of images, then each metric for the base, for the candidate and
their difference; a drop is marked. Below the classes, the macro (mean over classes) and micro (pooled)
rows. The same rows go to the console, to CSV, and to a PNG of grouped bars per class. The ONiT
Explorer's table is the model: its finetune gained on plants and animals and lost on maps, and a
reader must see the loss at a glance.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from registry.evaluation import EvalReport

DROP_MARK = "*"
TOLERANCE = 1e-9  # a difference smaller than this is no change (float noise in identical models)
OVERALL = ("(macro)", "(micro)")


def short(metric: str) -> str:
    """``class_recall@200`` -> ``R@200``; ``class_precision@200`` -> ``P@200``; ``class_r_precision`` -> ``R-P``."""
    name = metric.removeprefix("class_")
    if name == "r_precision":
        return "R-P"
    return name.replace("recall", "R").replace("precision", "P")


@dataclass(frozen=True)
class ClassRow:
    label: str
    n_images: int
    base: dict[str, float]
    candidate: dict[str, float]

    def diff(self, metric: str) -> float:
        return self.candidate.get(metric, math.nan) - self.base.get(metric, math.nan)

    def drops(self, metrics: Sequence[str]) -> list[str]:
        return [m for m in metrics if self.diff(m) < -TOLERANCE]


@dataclass(frozen=True)
class ClassComparison:
    base_name: str
    candidate_name: str
    metrics: tuple[str, ...]
    rows: tuple[ClassRow, ...]  # the classes, then the macro and micro rows

    @classmethod
    def of(
        cls,
        base_name: str,
        base: EvalReport,
        candidate_name: str,
        candidate: EvalReport,
        only: Sequence[str] | None = None,
    ) -> ClassComparison:
        """The table of two reports on one dataset; ``only`` keeps those class metrics (default: all)."""
        metrics = tuple(
            m for m in candidate.class_metric_names() if m in base.class_metric_names() and (only is None or m in only)
        )
        rows = []
        for label in sorted(set(base.per_class) | set(candidate.per_class)):
            b, c = base.per_class.get(label, {}), candidate.per_class.get(label, {})
            rows.append(ClassRow(label, int(c.get("n_images", b.get("n_images", 0))), b, c))
        n = sum(r.n_images for r in rows)
        for name, suffix in zip(OVERALL, ("", "_micro"), strict=True):
            pick = {m: m + suffix for m in metrics}
            rows.append(
                ClassRow(
                    name,
                    n,
                    {m: base.metrics.get(k, math.nan) for m, k in pick.items()},
                    {m: candidate.metrics.get(k, math.nan) for m, k in pick.items()},
                )
            )
        return cls(base_name, candidate_name, metrics, tuple(rows))

    @property
    def classes(self) -> tuple[ClassRow, ...]:
        return tuple(r for r in self.rows if r.label not in OVERALL)

    def regressions(self) -> dict[str, list[str]]:
        """Class -> the metrics on which the candidate is below the base."""
        return {r.label: d for r in self.classes if (d := r.drops(self.metrics))}

    def text(self) -> str:
        width = max([len("class"), *(len(r.label) for r in self.rows)]) + 2
        head = f"{'class':<{width}}{'n':>7}"
        for m in self.metrics:
            s = short(m)
            head += f"  {s + ' ' + self.base_name:>13}{s + ' ' + self.candidate_name:>13}{'diff':>9} "
        lines = [
            f"class queries: {self.base_name} (base) against {self.candidate_name} (candidate); "
            f"{DROP_MARK} marks a drop",
            head,
            "-" * len(head),
        ]
        for row in self.rows:
            if row.label == OVERALL[0]:
                lines.append("-" * len(head))
            line = f"{row.label:<{width}}{row.n_images:>7}"
            for m in self.metrics:
                d = row.diff(m)
                mark = DROP_MARK if d < -TOLERANCE else " "
                line += f"  {row.base.get(m, math.nan):>13.4f}{row.candidate.get(m, math.nan):>13.4f}{d:>+9.4f}{mark}"
            lines.append(line.rstrip())
        worse = self.regressions()
        if worse:
            named = ", ".join(f"{label} ({', '.join(short(m) for m in ms)})" for label, ms in worse.items())
            lines.append(f"{DROP_MARK} {len(worse)} of {len(self.classes)} classes drop: {named}")
        else:
            lines.append(f"no class drops on any metric ({len(self.classes)} classes)")
        return "\n".join(lines)

    def write_csv(self, path: Path) -> Path:
        with path.open("w", newline="") as fh:
            out = csv.writer(fh)
            head = ["class", "n_images"]
            for m in self.metrics:
                head += [f"{m}.{self.base_name}", f"{m}.{self.candidate_name}", f"{m}.diff"]
            out.writerow([*head, "drops"])
            for row in self.rows:
                cells: list[object] = [row.label, row.n_images]
                for m in self.metrics:
                    cells += [row.base.get(m, math.nan), row.candidate.get(m, math.nan), row.diff(m)]
                out.writerow([*cells, ";".join(row.drops(self.metrics))])
        return path

    def plot(self, path: Path) -> Path:
        """Grouped bars per class (base, candidate), one panel per metric; dropped classes in red."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        classes = self.classes
        n_panels = max(1, len(self.metrics))
        fig, axes = plt.subplots(n_panels, 1, figsize=(max(6.0, 0.45 * len(classes) + 2), 2.6 * n_panels))
        axes_list = list(axes) if n_panels > 1 else [axes]
        xs = list(range(len(classes)))
        for ax, m in zip(axes_list, self.metrics, strict=False):
            ax.bar([x - 0.2 for x in xs], [r.base.get(m, 0.0) for r in classes], 0.4, label=self.base_name)
            ax.bar([x + 0.2 for x in xs], [r.candidate.get(m, 0.0) for r in classes], 0.4, label=self.candidate_name)
            ax.set_ylabel(short(m))
            ax.set_ylim(0, 1.05)
            ax.set_xticks(xs, [r.label for r in classes], rotation=60, ha="right", fontsize=7)
            for tick, r in zip(ax.get_xticklabels(), classes, strict=True):
                if r.diff(m) < -TOLERANCE:
                    tick.set_color("red")
            ax.legend(fontsize=7, loc="upper right")
        axes_list[0].set_title(f"class queries per class: {self.base_name} against {self.candidate_name}")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
