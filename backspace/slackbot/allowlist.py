"""SLACK_ALLOWED_TEAMS, SLACK_ALLOWED_CHANNELS, SLACK_ALLOWED_USERS and SLACK_ADMIN_USERS."""

from __future__ import annotations

from dataclasses import dataclass

from backspace.config import Settings


def listed(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Allowlist:
    """Who may use backspace from Slack (empty lists allow anyone), and who may cancel any run."""

    teams: frozenset[str]
    channels: frozenset[str]
    users: frozenset[str]
    admins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Allowlist:
        return cls(
            teams=listed(settings.slack_allowed_teams),
            channels=listed(settings.slack_allowed_channels),
            users=listed(settings.slack_allowed_users),
            admins=listed(settings.slack_admin_users),
        )

    def refusal(self, team: str | None, channel: str | None, user: str | None) -> str | None:
        """A polite no for someone not allowed, or None."""
        if self.teams and team and team not in self.teams:
            return "Sorry, backspace is not enabled for this workspace."
        if self.channels and channel and channel not in self.channels:
            return "Sorry, backspace is not enabled in this channel. Ask an admin to add it."
        if self.users and user and user not in self.users and user not in self.admins:
            return "Sorry, you are not on the list of people who can use backspace. Ask an admin."
        return None
