//! The CLI side of the control socket: one request, one response, clear errors when
//! the agent is not running or the caller lacks the rights.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "hasync is not running (no control socket at {0}); start it with `hasync run --config FILE`"
    )]
    NotRunning(String),
    #[error("permission denied on {0}: the control socket is root-only (run as root)")]
    Permission(String),
    #[error("talking to hasync at {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("hasync answered something unreadable: {0}")]
    BadResponse(String),
}

/// Sends `request` to the agent listening at `path`.
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let shown = path.display().to_string();
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(shown.clone())
        }
        io::ErrorKind::PermissionDenied => ClientError::Permission(shown.clone()),
        _ => ClientError::Io {
            path: shown.clone(),
            source: e,
        },
    })?;
    let io_err = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_err)?;
    let mut line =
        serde_json::to_vec(request).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    serde_json::from_str(answer.trim())
        .map_err(|e| ClientError::BadResponse(format!("{e}: {answer}")))
}
