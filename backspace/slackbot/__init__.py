"""The Slack front end: `/backspace`, @mentions and the Cancel button on slack-bolt's AsyncApp.

It turns Slack requests into runs through the orchestrator's door (`Service.admit`) and follows
each run's events like any other subscriber; the orchestrator learns nothing of Slack.

  frontend.py   the AsyncApp and its client, Socket Mode, the life span
  endpoint.py   /slack/events in HTTP mode: body limit, signature, then Bolt
  signature.py  Slack's v0 request signature
  bolt.py       workarounds for what Bolt would fail on or misread
  listeners.py  the listeners: commands, mentions, the Cancel button
  allowlist.py  who may use backspace from Slack
  commands.py   what a command's text asks for
  messages.py   how runs and refusals read in Slack
  reporter.py   a run's status message and thread, from its events
  tasks.py      Slack calls whose failure never stops a run (the background work: backspace/tasks.py)
"""
