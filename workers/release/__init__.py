"""The deploy gate's native work: commit, push and compose deploys with
rollback. Imports ``workers.adapters`` and ``workers.infra`` (the report after a deploy)."""
