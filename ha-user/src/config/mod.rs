//! Configuration: the HCL `replication { ... }` schema, loading with line/column errors, validation.
//!
//! ```hcl
//! replication {
//!   mode       = "primary"
//!   peer_addr  = "10.250.0.2"
//!   secret_key = "lab-secret-please-change"
//!   ha {
//!     enabled = true
//!     conntrack_sync {
//!       enabled   = true
//!       interface = "sync0"
//!     }
//!   }
//! }
//! ```
//!
//! Every attribute, its type, default and meaning is listed in [`schema::REFERENCE`]
//! (rendered by [`reference`]).
//!
//! # Design
//!
//! The file is parsed with `hcl-edit`, which keeps the byte span of every key, value and
//! block, and a small schema-driven walker ([`parse`]) turns the AST into the typed
//! [`Config`]. We did not use `hcl-rs` + serde: serde stops at the first error and reports
//! a path, not a position, so getting `file:line:column` would need the hcl-edit AST anyway,
//! and "collect every error" would be impossible. The walker reports each problem at the
//! exact token (key for unknown/duplicate attributes, value for bad values, block header for
//! missing attributes), carries on, and then [`validate`] runs the cross-field checks.
//!
//! Stages:
//! * [`parse`]: text -> `Config`, syntax + types + ranges + cross-field checks. Pure: no
//!   filesystem access, so unit tests can use any paths.
//! * [`validate_files`]: the files the config names (TLS material, `notify_command`) exist
//!   and are readable/executable.
//! * [`load`]: reads the file and does both, with positions for the file errors too. This is
//!   what `hasync check-config` and `hasync run` call.
//!
//! Replication channel rules (seed 000 leaves them open): the TCP/TLS channel is optional.
//! The primary accepts it on `listen_addr`; a replica dials `primary_addr`, which is only
//! allowed in replica mode and only required there when TLS is configured. Heartbeats and
//! conntrack sync are UDP to `peer_addr` (or multicast) and never need the channel.
//! Authentication is mandatory: `secret_key` is required as soon as HA or sync is enabled.

mod conv;
mod error;
mod parse;
pub mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

pub use error::{ConfigError, ConfigErrors};
pub use schema::{
    Agent, Config, ConntrackSync, FailbackMode, Ha, LogFormat, LogLevel, Mode, PortRange,
    Replication, SecretKey, SyncFilter, VirtualIp, VirtualMac,
};

/// Reads, parses and fully validates a configuration file, including the files it names.
///
/// # Errors
/// Every problem found, with `file:line:column`; an unreadable file is one error naming it.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::file_level(name.clone(), format!("cannot read configuration file: {e}"))
    })?;
    analyse(&src, &name, true)
}

/// Parses and validates configuration text; `file_name` only labels the errors. Does not
/// touch the filesystem (see [`validate_files`]).
///
/// # Errors
/// Every problem found, sorted by position.
pub fn parse(src: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    analyse(src, file_name, false)
}

/// Checks that the TLS files exist and are readable and that `notify_command` is an
/// executable file. Errors carry the offending file's path (no line/column: the `Config`
/// no longer knows where it came from; [`load`] reports the same problems with positions).
///
/// # Errors
/// One error per unusable file.
pub fn validate_files(config: &Config) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = validate::files(config)
        .into_iter()
        .map(|p| ConfigError::file_level(p.file.display().to_string(), p.reason))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Markdown reference of every block and attribute: type, default, description.
pub fn reference() -> &'static str {
    static REFERENCE: LazyLock<String> = LazyLock::new(schema::render_reference);
    &REFERENCE
}

fn analyse(src: &str, file: &str, check_files: bool) -> Result<Config, ConfigErrors> {
    let (body, renamed) = parse_body_tolerant(src).map_err(|e| syntax_error(file, src, &e))?;
    let mut cx = parse::Cx::new(file, src);
    cx.renamed = renamed;
    let config = parse::walk(&mut cx, &body);
    validate::check(&config, &cx.locs, &mut cx.diag);
    if check_files {
        for p in validate::files(&config) {
            let span = cx.locs.find(p.attr);
            cx.diag.error(span, p.located_message(), None);
        }
    }
    cx.diag.finish()?;
    Ok(config)
}

/// Parses `src`, working around hcl-edit's refusal of duplicate attributes: each duplicate
/// key is overwritten with a same-length placeholder (so every span stays valid) and
/// recorded by offset, letting the walker report it as an ordinary error among the others.
fn parse_body_tolerant(
    src: &str,
) -> Result<(hcl_edit::structure::Body, HashMap<usize, String>), hcl_edit::parser::Error> {
    let mut text = Cow::Borrowed(src);
    if src.starts_with('\u{feff}') {
        // A byte-order mark (Windows editors) is not HCL; blank it without moving offsets.
        text.to_mut().replace_range(..3, "   ");
    }
    let mut renamed = HashMap::new();
    loop {
        let err = match hcl_edit::parser::parse_body(&text) {
            Ok(body) => return Ok((body, renamed)),
            Err(e) => e,
        };
        let offset = err.location().offset();
        let key_len = text.get(offset..).map_or(0, |rest| {
            rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len())
        });
        if !err.message().contains("redefined attribute")
            || key_len == 0
            || renamed.contains_key(&offset)
            || renamed.len() >= 1000
        {
            return Err(err);
        }
        let original = text[offset..offset + key_len].to_string();
        let mut placeholder = format!("_{}", renamed.len());
        placeholder.truncate(key_len);
        while placeholder.len() < key_len {
            placeholder.push('_');
        }
        text.to_mut()
            .replace_range(offset..offset + key_len, &placeholder);
        renamed.insert(offset, original);
    }
}

fn syntax_error(file: &str, src: &str, e: &hcl_edit::parser::Error) -> ConfigErrors {
    let loc = e.location();
    let line = e.line();
    let hint = if line.trim_start().split_once(':').is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    }) {
        Some("attributes are written `name = value`".to_string())
    } else if src.matches('{').count() != src.matches('}').count() {
        Some("check that every `{` has a matching `}`".to_string())
    } else {
        None
    };
    ConfigError {
        file: file.to_string(),
        line: loc.line(),
        column: loc.column(),
        message: format!("syntax error: {}", e.message()),
        hint,
    }
    .into()
}
