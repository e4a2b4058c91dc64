//! Command-line helpers: finding the agent's control socket and rendering answers.

pub mod cert;
pub mod states;
pub mod status;

use std::path::{Path, PathBuf};

use crate::config::{self, schema::Agent};

/// The control socket to talk to: `--socket`, else the configuration's
/// `agent.control_socket`, else the default.
pub fn socket_path(socket: Option<&Path>, config_file: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    if let Some(file) = config_file {
        return config::load(file)
            .map(|c| c.agent.control_socket)
            .map_err(|e| format!("{e}"));
    }
    Ok(Agent::default().control_socket)
}
