//! The control socket server: bound at `agent.control_socket`, mode 0600 in a 0700
//! directory, so only root can drive the agent.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{MAX_REQUEST, Request, Response};

/// What answers requests (the agent implements it).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("control socket {0}: another hasync is running there")]
    InUse(PathBuf),
}

/// The bound socket; removes its file on drop.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` (creating its directory 0700), replacing a stale socket file but
    /// refusing one a live agent answers on.
    pub async fn bind(path: &Path) -> Result<Server, ControlError> {
        let err = |op| {
            let path = path.to_path_buf();
            move |source| ControlError::Io { path, op, source }
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(err("creating its directory"))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(err("chmod 0700 its directory"))?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(err("removing a stale socket"))?;
        }
        let listener = UnixListener::bind(path).map_err(err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(err("chmod 0600"))?;
        Ok(Server {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the task is dropped; one task per connection.
    pub async fn run<H: Handler>(self, handler: Arc<H>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, &*handler).await {
                            tracing::debug!(error = %e, "control connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve<H: Handler>(stream: UnixStream, handler: &H) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let response = match reader.read_line(&mut line).await {
        Ok(0) => return Ok(()),
        Ok(_) if !line.ends_with('\n') && line.len() >= MAX_REQUEST => Response::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        },
        Ok(_) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(request) => handler.handle(request).await,
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response)
        .unwrap_or_else(|_| b"{\"result\":\"error\",\"message\":\"encoding failed\"}".to_vec());
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::control::client::{self, ClientError};

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            match request {
                Request::Status => {
                    Response::Status(Box::new(serde_json::json!({ "role": "backup" })))
                }
                other => Response::Done {
                    message: format!("{other:?}"),
                },
            }
        }
    }

    fn sock_path(name: &str) -> PathBuf {
        std::env::temp_dir()
            .join(testkit::unique_name("ctl"))
            .join(name)
    }

    /// Sends raw bytes; a connection reset (the server closed on an oversized request
    /// with input still unread) reads as "reset".
    async fn raw(path: &Path, line: &[u8]) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        if s.write_all(line).await.is_err() {
            return "reset".into();
        }
        let mut out = String::new();
        match s.read_to_string(&mut out).await {
            Ok(_) => out,
            Err(_) => "reset".into(),
        }
    }

    #[tokio::test]
    async fn answers_requests_and_survives_garbage() {
        let path = sock_path("hasync.sock");
        let server = Server::bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "root-only socket");
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        tokio::spawn(server.run(Arc::new(Echo)));
        let p = path.clone();
        let status = tokio::task::spawn_blocking(move || client::call(&p, &Request::Status))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            status,
            Response::Status(Box::new(serde_json::json!({ "role": "backup" })))
        );
        assert!(
            raw(&path, b"{\"cmd\":\"launch-missiles\"}\n")
                .await
                .contains("bad request")
        );
        assert!(raw(&path, b"not json\n").await.contains("bad request"));
        let long = vec![b'x'; MAX_REQUEST + 10];
        let answer = raw(&path, &long).await;
        assert!(
            answer.contains("longer than") || answer == "reset",
            "{answer}"
        );
        let p = path.clone();
        let done = tokio::task::spawn_blocking(move || client::call(&p, &Request::Promote))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            done,
            Response::Done {
                message: "Promote".into()
            }
        );
    }

    #[tokio::test]
    async fn refuses_a_live_socket_and_replaces_a_stale_one() {
        let path = sock_path("hasync.sock");
        let first = Server::bind(&path).await.unwrap();
        assert!(matches!(
            Server::bind(&path).await,
            Err(ControlError::InUse(_))
        ));
        drop(first);
        // A socket file nobody answers on (an agent that was killed): stale.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let second = Server::bind(&path).await.unwrap();
        drop(second);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn client_says_when_the_agent_is_not_running() {
        let err =
            client::call(Path::new("/nonexistent/hasync.sock"), &Request::Status).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
        assert!(err.to_string().contains("hasync is not running"), "{err}");
    }
}
