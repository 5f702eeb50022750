"""The pure core: the registry (pipeline.toml), the workflow transitions and small
text/JSON rules. No I/O; imports nothing else of agogd."""
