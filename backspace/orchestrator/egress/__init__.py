"""The sandbox's one door to the network: which hosts a phase may reach, and the proxy that
enforces it (hosts.py, gate.py, proxy.py, splice.py)."""
