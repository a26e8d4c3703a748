"""The HTTP front end: JSON and Server-Sent Events over Starlette."""
