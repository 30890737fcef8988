//! `overseer gateway`: an MCP Streamable HTTP reverse proxy that decides every `tools/call`
//! before it reaches an upstream MCP server (see `docs/gateway.md`).
//!
//! * [`decider`]: who decides (in-process engine or a remote decision service, failing closed).
//! * [`config`]: the configuration file's upstream MCP servers, their injected credentials, who
//!   may reach them.
//! * [`reload`]: the configuration file and the files it names, read again while serving.
//! * [`mcpservers`]: upstreams from `MCPServer` objects, watched in one namespace.
//! * [`routes`]: the table of upstreams the proxy reads lock-free and the watch replaces.
//! * [`jsonrpc`]: JSON-RPC messages, errors, and JSON/SSE response bodies.
//! * [`members`]: refuses JSON objects whose member names collide under case folding.
//! * [`proxy`]: the axum router that authenticates, decides and forwards.
//! * [`metrics`]: its Prometheus metrics.
//! * [`run`]: the `overseer gateway` command.
//! * [`tls`]: TLS to `https://` upstreams (system roots, or an upstream's own CA and client
//!   certificate), one client per TLS material.

pub mod config;
pub mod decider;
pub mod jsonrpc;
pub mod mcpservers;
pub mod members;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod run;
pub mod tls;
