"""Agent CLI profiles: how to run each real coding-agent CLI headless.

A profile owns one CLI's argv for a non-interactive run, its headless
permissions (edits inside the REQ's working tree only), how it takes the
prompt, the model and the role, how it resumes a session, and how its
structured output reads (the final text, session, model, tokens, cost,
turns). ``base`` states the interface; ``claude``, ``codex``, ``gemini``
and ``generic`` (an argv template) implement it.
"""
