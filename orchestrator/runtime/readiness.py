"""What /readyz reports: NATS, Postgres, migrations and topology, each OK or not."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Readiness:
    nats: bool = False
    postgres: bool = False
    migrations: bool = False
    topology: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return (
            self.nats and self.postgres and self.migrations and self.topology and not self.draining
        )

    def failing(self) -> list[str]:
        checks = {k: v for k, v in asdict(self).items() if k != "draining"}
        out = [k for k, ok in checks.items() if not ok]
        return [*out, "draining"] if self.draining else out

    def as_dict(self) -> dict[str, object]:
        checks = {k: ("ok" if v else "failing") for k, v in asdict(self).items() if k != "draining"}
        return {
            "status": "ready" if self.ready else "not_ready",
            "checks": checks,
            "draining": self.draining,
        }
