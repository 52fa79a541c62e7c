//! `weft-testbed`: the test workloads as a process, for pods that are network namespaces.
//!
//! ```text
//! weft-testbed http --listen ADDR --name NAME     HTTP/1 and HTTP/2 test server
//! weft-testbed tcp-echo --listen ADDR             echoes until the client half-closes
//! weft-testbed greet --listen ADDR                server-first: greets, then echoes
//! weft-testbed get URL [--method M] [--host H]     one request (Host: H); prints JSON
//! weft-testbed tcp ADDR [--banner] --send TEXT    one TCP exchange; prints JSON
//! ```

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is how a failed expectation is reported"
)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::{client, workloads};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = || -> anyhow::Result<SocketAddr> {
        flag("--listen")
            .context("--listen ADDR")?
            .parse()
            .context("--listen")
    };
    match args.first().map(String::as_str) {
        Some("http") => {
            let listener = TcpListener::bind(listen()?).await?;
            let name = flag("--name").unwrap_or_else(|| "testbed".into());
            let (_release, released) = tokio::sync::watch::channel(true);
            workloads::serve_http(listener, name, Default::default(), released).await;
        }
        Some("tcp-echo") => {
            let task = workloads::tcp_echo(TcpListener::bind(listen()?).await?).await;
            task.await?;
        }
        Some("greet") => {
            let task = workloads::greeter(
                TcpListener::bind(listen()?).await?,
                "220 weft-testbed ready\r\n",
            )
            .await;
            task.await?;
        }
        Some("get") => {
            let url: http::Uri = args.get(1).context("URL")?.parse()?;
            let method = flag("--method").unwrap_or_else(|| "GET".into());
            let authority = url.authority().context("URL needs a host")?.clone();
            let port = authority.port_u16().unwrap_or(80);
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let addr = SocketAddr::new(host.parse().context("URL host must be an IP")?, port);
            let mut sender =
                tokio::time::timeout(Duration::from_secs(10), client::http1(addr)).await??;
            let host_header = flag("--host").unwrap_or_else(|| authority.as_str().to_owned());
            let req = Request::builder()
                .method(method.as_str())
                .uri(url.path_and_query().map_or("/", |p| p.as_str()))
                .header("host", host_header)
                .body(client::body(Bytes::new()))?;
            let resp =
                tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
            let headers: serde_json::Map<String, serde_json::Value> = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into(),
                    )
                })
                .collect();
            let (status, body) = client::text(resp).await?;
            println!(
                "{}",
                serde_json::json!({ "status": status, "headers": headers, "body": body })
            );
        }
        Some("tcp") => {
            let addr: SocketAddr = args.get(1).context("ADDR")?.parse()?;
            let send = flag("--send").unwrap_or_default();
            let exchange = async {
                let stream = TcpStream::connect(addr).await?;
                let mut stream = BufReader::new(stream);
                let mut banner = String::new();
                if args.iter().any(|a| a == "--banner") {
                    stream.read_line(&mut banner).await?;
                }
                stream.get_mut().write_all(send.as_bytes()).await?;
                stream.get_mut().shutdown().await?;
                let mut echo = String::new();
                stream.read_to_string(&mut echo).await?;
                anyhow::Ok((banner, echo))
            };
            let (banner, echo) = tokio::time::timeout(Duration::from_secs(10), exchange)
                .await
                .context("timed out")??;
            println!("{}", serde_json::json!({ "banner": banner, "echo": echo }));
        }
        other => bail!("unknown command {other:?}; see the source for usage"),
    }
    Ok(())
}
