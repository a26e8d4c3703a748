"""One TLS context for the tests' HTTP clients.

Every `httpx` client (and `httpx.get`) builds an SSL context of its own unless handed one, and
building one loads the whole CA bundle: about 30 ms of CPU, paid by each of the thousands of
clients the suite makes, for loopback `http://` URLs that never use it. Handing every client
this one (built once per process, with the same default verification) keeps that cost to one.
"""

from __future__ import annotations

import ssl

TLS = ssl.create_default_context()
