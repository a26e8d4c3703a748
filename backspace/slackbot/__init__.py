"""The Slack front end: `/backspace`, @mentions and the Cancel button on slack-bolt's AsyncApp.

It turns Slack requests into RunRequests, hands them to the runner and follows each run's events
like any other subscriber; the orchestrator learns nothing of Slack.
"""
