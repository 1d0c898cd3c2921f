//! Service discovery in a few lines: an `echo` server registers itself, a caller discovers it
//! and calls it, then the server goes away and the caller sees it leave.
//!
//! ```text
//! cargo run --example register_service -- 127.0.0.1:2379
//! concordctl registry watch echo      # in another terminal
//! ```
//!
//! With `--bounded` it runs once through and exits (CI runs it so).

use std::time::Duration;

use concord_client::{Client, NewInstance};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bounded = args.iter().any(|a| a == "--bounded");
    let endpoints = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or("127.0.0.1:2379".into());
    let client = Client::connect(endpoints.split(',')).await?;

    // The server: answers "pong" to anything, and registers where it listens.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 64];
            if stream.read(&mut buffer).await.is_ok() {
                let _ = stream.write_all(b"pong").await;
            }
        }
    });
    let instance = NewInstance::new("echo", "echo-1", &addr)
        .metadata(json!({"zone": "local", "weight": 1}))
        .ttl(Duration::from_secs(5));
    let registration = client.register_instance(instance).await?;
    println!("registered {} at {addr}", registration.key());

    // The caller: an always-current view of the service, and a pick per call.
    let mut echo = client.discover("echo").await?;
    let picked = echo.pick().ok_or("no echo instance")?;
    let mut stream = TcpStream::connect(&picked.endpoint.addr).await?;
    stream.write_all(b"ping").await?;
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await?;
    println!("called {}: {}", picked.id, String::from_utf8_lossy(&answer));

    if !bounded {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    // The server goes away: its registration goes with it, and the caller's view follows.
    registration.deregister().await?;
    server.abort();
    while echo.pick().is_some() {
        echo.changed().await?;
    }
    println!("echo-1 left; {} echo instances remain", echo.instances().len());
    Ok(())
}
