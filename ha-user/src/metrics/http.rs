//! A minimal HTTP endpoint for Prometheus scrapes: `GET /metrics`. Anything else gets a
//! 404; malformed requests are answered with 400 and never stop the listener.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::Board;

/// Binds `addr` and serves scrapes until the task is dropped.
pub async fn serve(addr: SocketAddr, board: Board) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics endpoint listening");
    run(listener, board).await
}

/// Serves scrapes on an already bound listener.
pub async fn run(listener: TcpListener, board: Board) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let board = board.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &board).await {
                tracing::debug!(%peer, error = %e, "metrics request failed");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, board: &Board) -> std::io::Result<()> {
    let mut buf = [0u8; 2048];
    let mut len = 0;
    // Read the request head (bounded; the body, if any, is ignored).
    while len < buf.len() {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (status, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => match board.render() {
            Ok(text) => ("200 OK", text),
            Err(_) => ("500 Internal Server Error", "encoding failed\n".to_string()),
        },
        (Some(_), Some(_)) => ("404 Not Found", "try /metrics\n".to_string()),
        _ => ("400 Bad Request", "bad request\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_survives_garbage() {
        let board = Board::default();
        board.publish("t", vec![Sample::counter("events", "Events", 7)]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(run(listener, board));
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("hasync_events_total 7"), "{ok}");
        assert!(
            get(addr, "\u{0}\u{1}\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 400")
        );
        assert!(
            get(addr, "GET / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, "GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .contains("200 OK")
        );
    }
}
