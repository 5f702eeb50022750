"""What arrives: parsers of notices, decisions, intake and OWNER_REQUESTS.md.
No database or network; imports ``core`` and ``runtime`` (for logging)."""
