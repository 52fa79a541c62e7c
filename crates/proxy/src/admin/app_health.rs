//! `GET /app-health/<container>/<kind>`: the app's own probe, run by the proxy.
//!
//! The kubelet probes in plaintext from the node, which STRICT mTLS refuses, so the injector
//! points the app's probes here and hands the proxy the originals (`--app-probes`,
//! [`weft_api::probes`]). The proxy runs each against the pod's own address, or the probe's
//! `host`, within the probe's timeout, as the kubelet would have: an HTTP GET passes with a
//! status from 200 to 399, a TCP probe when the connection opens, a gRPC probe when
//! `grpc.health.v1.Health/Check` answers SERVING. The proxy's own connections are not
//! redirected (its UID is excluded), so the probe reaches the app directly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use weft_api::probes::{AppProbe, GrpcCheck, HttpGetCheck, ProbeCheck};

/// Runs `probe`: `Ok` with what passed, `Err` with why it failed.
pub async fn run(probe: &AppProbe, pod_ip: IpAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    match tokio::time::timeout(timeout, check(&probe.check, pod_ip)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
    }
}

async fn check(check: &ProbeCheck, pod_ip: IpAddr) -> Result<String, String> {
    match check {
        ProbeCheck::HttpGet(h) => http_get(h, pod_ip).await,
        ProbeCheck::TcpSocket(t) => {
            let addr = resolve(t.host.as_deref(), pod_ip, t.port).await?;
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            Ok(format!("connected to {addr}"))
        }
        ProbeCheck::Grpc(g) => grpc(g, pod_ip).await,
    }
}

async fn resolve(host: Option<&str>, pod_ip: IpAddr, port: u16) -> Result<SocketAddr, String> {
    let Some(host) = host else {
        return Ok(SocketAddr::new(pod_ip, port));
    };
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

async fn http_get(h: &HttpGetCheck, pod_ip: IpAddr) -> Result<String, String> {
    let addr = resolve(h.host.as_deref(), pod_ip, h.port).await?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let host = match &h.host {
        Some(host) => format!("{host}:{}", h.port),
        None => addr.to_string(),
    };
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(h.path.as_str())
        .header(header::HOST, host.as_str())
        .header(header::USER_AGENT, "kube-probe/weft-proxy")
        .header(header::ACCEPT, "*/*");
    for header in &h.http_headers {
        req = req.header(header.name.as_str(), header.value.as_str());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("the probe's request is not valid: {e}"))?;
    let status = if h.scheme == "HTTPS" {
        let server_name = rustls::pki_types::ServerName::try_from(
            h.host.clone().unwrap_or_else(|| addr.ip().to_string()),
        )
        .map_err(|e| format!("the probe's host: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(any_certificate())
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
        send_http1(tls, req).await?
    } else {
        send_http1(tcp, req).await?
    };
    if (200..400).contains(&status.as_u16()) {
        Ok(format!("HTTP {}", status.as_u16()))
    } else {
        Err(format!("HTTP {} from {}{}", status.as_u16(), addr, h.path))
    }
}

async fn send_http1<S>(io: S, req: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    Ok(resp.status())
}

/// `grpc.health.v1.Health/Check` over h2c; SERVING passes.
async fn grpc(g: &GrpcCheck, pod_ip: IpAddr) -> Result<String, String> {
    let addr = SocketAddr::new(pod_ip, g.port);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 with {addr}: {e}"))?;
    tokio::spawn(conn);
    // HealthCheckRequest { service = 1 }, in a gRPC frame.
    let service = g.service.as_deref().unwrap_or_default().as_bytes();
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service);
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame.freeze()))
        .map_err(|e| format!("the probe's request is not valid: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC: {e}"))?;
    let head_status = grpc_status(resp.headers());
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("gRPC: {e}"))?;
    let status = collected
        .trailers()
        .and_then(grpc_status)
        .or(head_status)
        .unwrap_or_default();
    if status != "0" {
        return Err(format!("gRPC status {status}"));
    }
    // HealthCheckResponse { status = 1 }: SERVING is 1.
    let mut body = collected.to_bytes();
    if body.len() < 5 {
        return Err("gRPC: no health answer".into());
    }
    body.advance(5);
    match serving_status(&body) {
        Some(1) => Ok("SERVING".into()),
        Some(n) => Err(format!("the health service says {}", health_name(n))),
        None => Err("the health service says UNKNOWN".into()),
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn health_name(n: u64) -> &'static str {
    match n {
        0 => "UNKNOWN",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "an unknown status",
    }
}

/// Field 1 (a varint) of a HealthCheckResponse.
fn serving_status(mut body: &[u8]) -> Option<u64> {
    while !body.is_empty() {
        let key = read_varint(&mut body)?;
        match (key >> 3, key & 7) {
            (1, 0) => return read_varint(&mut body),
            (_, 0) => {
                read_varint(&mut body)?;
            }
            (_, 2) => {
                let len = usize::try_from(read_varint(&mut body)?).ok()?;
                body = body.get(len..)?;
            }
            _ => return None,
        }
    }
    None
}

fn read_varint(body: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = body.split_first()?;
        *body = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(buf: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        buf.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

/// The kubelet does not check an HTTPS probe's certificate; neither does the proxy. The
/// handshake's signature is still verified, so the connection is a real TLS one.
fn any_certificate() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(config) => Arc::new(config),
        // ring's defaults always offer a protocol version; keep a config that fails closed.
        Err(_) => Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ),
    }
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_answer_is_read_past_other_fields() {
        assert_eq!(serving_status(&[0x08, 0x01]), Some(1));
        assert_eq!(serving_status(&[0x12, 0x01, 0x78, 0x08, 0x02]), Some(2));
        assert_eq!(serving_status(&[]), None);
        assert_eq!(serving_status(&[0x08]), None);
        let mut buf = BytesMut::new();
        put_varint(&mut buf, 300);
        assert_eq!(read_varint(&mut &buf[..]), Some(300));
    }
}
