"""Drive the official MCP Python SDK through the Overseer gateway (e2e/tests/gateway_peers.rs).

Usage: client.py GATEWAY_MCP_URL AGENT_KEY DECISION_URL APPROVER_KEY

Lists the tools, calls an allowed tool, a denied tool and a tool that needs approval (approving it
through the decision service's review endpoint, then repeating the exact same call), and prints one
JSON object with what happened. Exits non-zero only when the SDK itself fails unexpectedly.
"""

import asyncio
import json
import sys
import urllib.request

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


def approve(decision_url, approver_key, approval_id):
    request = urllib.request.Request(
        f"{decision_url}/v1/approvals/{approval_id}/review",
        data=json.dumps({"verdict": "Approve"}).encode(),
        headers={"Authorization": f"Bearer {approver_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


async def main(url, agent_key, decision_url, approver_key):
    out = {}
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {agent_key}"})
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                out["protocolVersion"] = init.protocol_version
                tools = await session.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)

                result = await session.call_tool("echo", {"message": "hello through the gateway"})
                out["allowed"] = {"isError": bool(result.is_error), "text": text_of(result)}

                try:
                    await session.call_tool("get-env", {})
                    out["denied"] = {"error": None}
                except MCPError as e:
                    out["denied"] = {"error": e.message, "code": e.code}

                args = {"a": 2, "b": 3}
                try:
                    await session.call_tool("get-sum", args)
                    out["approval"] = {"first": "allowed without approval"}
                except MCPError as e:
                    data = e.data or {}
                    approval_id = data.get("approvalId")
                    out["approval"] = {"first": e.message, "code": e.code, "approvalId": approval_id}
                    if approval_id:
                        reviewed = approve(decision_url, approver_key, approval_id)
                        out["approval"]["state"] = reviewed.get("state")
                        result = await session.call_tool("get-sum", args)
                        out["approval"]["after"] = {"isError": bool(result.is_error), "text": text_of(result)}
    print(json.dumps(out))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
