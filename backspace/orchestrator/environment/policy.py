"""The operator's side of environments, and what a repository's request comes to under it.

BACKSPACE_EGRESS_ALLOW is the most any repository may ask for: a repository's lists are cut to
it, and what was cut is said in the run's events. BACKSPACE_AGENT_NETWORK decides whether the
agent phase (and verification, which runs as the agent did) may use `[network] agent` at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backspace.orchestrator.egress.hosts import HostList
from backspace.orchestrator.environment.repo_file import RepoEnvironment


@dataclass(frozen=True)
class EnvironmentPolicy:
    egress_allow: HostList = field(default_factory=HostList)
    agent_network: bool = False  # BACKSPACE_AGENT_NETWORK=allowlist
    setup_timeout: float = 600.0
    verify_timeout: float = 600.0  # per verify command
    test_command: str | None = None  # BACKSPACE_TEST_COMMAND: verify for files without [verify]


@dataclass(frozen=True)
class NetworkPlan:
    """What each phase may reach in one run, and what the operator's ceiling took away."""

    setup: HostList
    agent: HostList
    setup_cut: tuple[str, ...] = ()
    agent_cut: tuple[str, ...] = ()
    agent_off: bool = False  # the repository asked for agent hosts; the server allows none

    def notices(self) -> list[str]:
        """Sentences for the run's events: every host asked for and not granted, and why."""
        said = []
        if self.setup_cut:
            said.append(
                f"Not allowed by this server (BACKSPACE_EGRESS_ALLOW), so setup cannot reach: "
                f"{', '.join(self.setup_cut)}"
            )
        if self.agent_off:
            said.append(
                "The agent has no network on this server (BACKSPACE_AGENT_NETWORK=off): "
                "[network] agent is not used"
            )
        elif self.agent_cut:
            said.append(
                f"Not allowed by this server (BACKSPACE_EGRESS_ALLOW), so the agent cannot reach: "
                f"{', '.join(self.agent_cut)}"
            )
        return said


def network_plan(repo: RepoEnvironment, policy: EnvironmentPolicy) -> NetworkPlan:
    setup, setup_cut = repo.setup_hosts.cut_to(policy.egress_allow)
    if not policy.agent_network:
        return NetworkPlan(setup, HostList(), setup_cut, agent_off=bool(repo.agent_hosts))
    agent, agent_cut = repo.agent_hosts.cut_to(policy.egress_allow)
    return NetworkPlan(setup, agent, setup_cut, agent_cut)


def verify_commands(repo: RepoEnvironment, policy: EnvironmentPolicy) -> tuple[str, ...]:
    """The repository's [verify] run, else the operator's default test command, else none."""
    if repo.verify:
        return repo.verify
    return (policy.test_command,) if policy.test_command else ()
