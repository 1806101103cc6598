//! A CONNECT proxy on loopback, for clients that give no hook into their connections
//! (oci-client builds its own reqwest client). The client is pointed at it as its HTTPS
//! proxy, so every connection it opens — to the registry, and to whatever blob storage the
//! registry redirects to — is resolved here and checked against the policy before a byte
//! goes out. The tunnel carries TLS end to end: the proxy sees host names, never contents.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{EgressPolicy, Refusal};

/// The longest CONNECT request head read.
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy; it stops when dropped.
pub struct ConnectProxy {
    url: String,
    refused: Arc<Mutex<Option<Refusal>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start(policy: Arc<EgressPolicy>) -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let refused = Arc::new(Mutex::new(None));
        let task = tokio::spawn(serve(listener, policy, refused.clone()));
        Ok(Self { url, refused, task })
    }

    /// The proxy URL to give the client.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The last connection the policy refused, if any: the client only sees a 403 from the
    /// proxy, this says why.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused.lock().ok().and_then(|refused| refused.clone())
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    policy: Arc<EgressPolicy>,
    refused: Arc<Mutex<Option<Refusal>>>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::debug!(%error, "egress proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (policy, refused) = (policy.clone(), refused.clone());
        tokio::spawn(async move {
            if let Err(error) = tunnel(client, &policy, &refused).await {
                tracing::debug!(%error, "egress proxy: tunnel ended");
            }
        });
    }
}

async fn tunnel(
    mut client: TcpStream,
    policy: &EgressPolicy,
    refused: &Mutex<Option<Refusal>>,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client))
        .await
        .map_err(|_| std::io::Error::other("no request head within 10 s"))??;
    let Some((host, port)) = connect_target(&head) else {
        return answer(&mut client, "400 Bad Request").await;
    };
    let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => return answer(&mut client, "502 Bad Gateway").await,
    };
    let allowed = match policy.filter(&host, addrs) {
        Ok(allowed) => allowed,
        Err(refusal) => {
            tracing::info!(%refusal, "egress proxy: connection refused");
            if let Ok(mut last) = refused.lock() {
                *last = Some(refusal);
            }
            return answer(&mut client, "403 Forbidden").await;
        }
    };
    let mut upstream = None;
    for addr in allowed {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            upstream = Some(stream);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        return answer(&mut client, "502 Bad Gateway").await;
    };
    client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn answer(client: &mut TcpStream, status: &str) -> std::io::Result<()> {
    client
        .write_all(
            format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
}

/// Reads up to the blank line that ends the request head. The client waits for the answer
/// before it starts TLS, so nothing follows the head.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let read = client.read(&mut buffer).await?;
        if read == 0 {
            return Err(std::io::Error::other(
                "closed before the request head ended",
            ));
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Ok(head)
}

/// The host and port of `CONNECT host:port HTTP/1.1`; None for any other request. Pure.
fn connect_target(head: &[u8]) -> Option<(String, u16)> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "CONNECT" {
        return None;
    }
    let authority = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connect_requests_name_a_target() {
        assert_eq!(
            connect_target(b"CONNECT registry.example:443 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("registry.example".into(), 443))
        );
        assert_eq!(
            connect_target(b"CONNECT [::1]:5000 HTTP/1.1\r\n\r\n"),
            Some(("::1".into(), 5000))
        );
        for bad in [
            &b"GET http://registry.example/ HTTP/1.1\r\n\r\n"[..],
            b"CONNECT registry.example HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"CONNECT registry.example:99999 HTTP/1.1\r\n\r\n",
            b"CONNECT registry.example:443\r\n\r\n",
            b"\xff\xfe",
        ] {
            assert_eq!(connect_target(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_target_gets_403_and_the_refusal_is_kept_while_an_allowed_one_is_tunnelled() {
        // An echo server on loopback stands for the registry.
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = echo.accept().await.unwrap();
            let mut byte = [0u8; 5];
            stream.read_exact(&mut byte).await.unwrap();
            stream.write_all(&byte).await.unwrap();
        });
        let ask = |proxy: String, target: String| async move {
            let address = proxy.trim_start_matches("http://").to_string();
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(
                    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes(),
                )
                .await
                .unwrap();
            let mut answer = [0u8; 12];
            stream.read_exact(&mut answer).await.unwrap();
            (stream, String::from_utf8_lossy(&answer).to_string())
        };

        let open = ConnectProxy::start(Arc::new(EgressPolicy::default()))
            .await
            .unwrap();
        let (mut stream, status) = ask(open.url().into(), format!("127.0.0.1:{echo_port}")).await;
        assert_eq!(status, "HTTP/1.1 200");
        let mut rest = [0u8; 27];
        stream.read_exact(&mut rest).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut echoed = [0u8; 5];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"hello");
        assert_eq!(open.refusal(), None);

        let policy =
            EgressPolicy::from_flags(&["127.0.0.0/8".to_string(), "::1/128".to_string()], &[])
                .unwrap();
        let closed = ConnectProxy::start(Arc::new(policy)).await.unwrap();
        let (_, status) = ask(closed.url().into(), format!("localhost:{echo_port}")).await;
        assert_eq!(status, "HTTP/1.1 403");
        let refusal = closed.refusal().expect("the refusal is kept");
        assert_eq!(refusal.host.as_deref(), Some("localhost"));
    }

    proptest::proptest! {
        #[test]
        fn any_request_head_is_read_without_panic(head in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Some((host, _)) = connect_target(&head) {
                proptest::prop_assert!(!host.is_empty());
            }
        }
    }
}
