#!/usr/bin/env bash
# Install the MCP peers the gateway e2e test (e2e/tests/gateway_peers.rs) drives:
#   * @modelcontextprotocol/server-everything (npm, pinned by package-lock.json) into node_modules/
#   * the official MCP Python SDK (`mcp` from PyPI, pinned in requirements.txt) into .venv/
# Needs node >= 18 with npm, and python3 >= 3.10 with venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
echo "peers installed: $(node -e 'console.log(require("./node_modules/@modelcontextprotocol/server-everything/package.json").version)') server-everything, mcp $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("mcp"))')"
