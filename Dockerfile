# One backspace replica: `backspace serve` with its local sandbox (bubblewrap) and git.
# Used by compose.yaml (two replicas on PostgreSQL); docs/operations.md says how to run it.
# NOT built or run on the machine this was written on (no Docker there): tests/test_deploy_files.py
# checks what can be checked offline.
FROM python:3.11-slim

# What scripts/bootstrap installs for a server: git, bubblewrap (the local sandbox), libseccomp2
# (its syscall filter), socat (the sandbox's relay to its network door); util-linux's prlimit and
# setpriv (in every Debian base, named to be sure). The claude-code engine's CLI (npm) is left
# out: /health and `backspace doctor` say it is unavailable.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates git bubblewrap libseccomp2 socat util-linux \
 && rm -rf /var/lib/apt/lists/*

# The same uv as scripts/bootstrap (UV_VERSION there), from PyPI.
RUN pip install --no-cache-dir --disable-pip-version-check uv==0.13.9

# Not under /usr or /etc: backspace refuses to start where every sandbox could read its files.
WORKDIR /srv/backspace
ENV UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy

# The locked dependencies first (a layer reused while only the code changes), then the project.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY backspace ./backspace
RUN uv sync --locked --no-dev

ENV PATH=/srv/backspace/.venv/bin:$PATH HOST=0.0.0.0 PORT=8000
EXPOSE 8000
# Settings come from the environment (compose.yaml's env_file: the shared .env); none is baked in.
CMD ["backspace", "serve"]
