//! `overseer gateway`: an MCP Streamable HTTP reverse proxy that decides every `tools/call`
//! before it reaches an upstream MCP server (see `docs/gateway.md`).
//!
//! * [`decider`]: who decides (in-process engine or a remote decision service, failing closed).

pub mod decider;
