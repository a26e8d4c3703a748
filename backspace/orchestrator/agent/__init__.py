"""The coding agent: a model loop in the orchestrator whose tool calls run in the sandbox."""

from backspace.orchestrator.agent.loop import Agent, AgentLimits, AgentResult
from backspace.orchestrator.agent.model import AnthropicModel, Model, ModelError

__all__ = ["Agent", "AgentLimits", "AgentResult", "AnthropicModel", "Model", "ModelError"]
