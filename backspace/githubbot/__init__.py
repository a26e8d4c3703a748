"""The GitHub front end: ``POST /github/webhook``.

A signed delivery (signature.py) becomes at most one trigger (triggers.py): a mention of the
bot on one of its pull requests (a follow-up on that run's family) or on an issue, or the
trigger label on an issue (a new run that closes it). Only people with write access trigger,
never bots nor backspace itself (access.py). The answer is immediate; the work, an 👀 reaction,
the run and ONE status comment kept current (reporter.py), happens in the front end's tasks.
"""
