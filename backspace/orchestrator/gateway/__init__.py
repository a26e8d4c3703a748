"""The model gateway: the model's key stays on the host; a sandboxed engine gets a door to it."""

from backspace.orchestrator.gateway.gateway import GatewayLimits, ModelGateway
from backspace.orchestrator.gateway.lease import GatewayLease

__all__ = ["GatewayLease", "GatewayLimits", "ModelGateway"]
