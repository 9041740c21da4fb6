//! runc's command line, as far as `gpuslice-runtime` needs to understand it.
//!
//! Every argument goes to the real runtime unchanged, except gpuslice-runtime's own
//! `--gpuslice-config=PATH` (Docker's `runtimeArgs` put it in front). Only `create` and `run`
//! are looked at: their `--bundle` (default: the current directory). runc's global flags that
//! take a value are known, so that a value is never taken for the command; `--log` and
//! `--log-format` are kept, because a refusal is written to that log, where containerd's shim
//! (and so Docker) reads the runtime's last error from.

use std::ffi::OsString;
use std::path::PathBuf;

/// gpuslice-runtime's own flag: the node config to read instead of `/etc/gpuslice/config.toml`.
pub const CONFIG_FLAG: &str = "--gpuslice-config";

/// runc's global flags that take a value (`--root /run/runc` as well as `--root=/run/runc`).
const GLOBAL_VALUED: &[&str] = &["log", "log-format", "root", "criu", "rootless"];
/// Flags of `create` and `run` that take a value, besides `--bundle`.
const CREATE_VALUED: &[&str] = &["console-socket", "pid-file", "preserve-fds"];

/// One invocation, as the engine made it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `--gpuslice-config`, taken out of the arguments.
    pub config: Option<PathBuf>,
    /// What the real runtime gets: every argument but ours, in order.
    pub runtime_args: Vec<OsString>,
    /// The runtime's command (`create`, `run`, `start`, `delete`, …); `None` for `--version` & co.
    pub command: Option<String>,
    /// `--bundle` of `create` or `run`; `None` is the current directory.
    pub bundle: Option<PathBuf>,
    /// runc's `--log`.
    pub log: Option<PathBuf>,
    /// runc's `--log-format` (`text` or `json`).
    pub log_format: Option<String>,
}

impl Invocation {
    /// Whether the command creates a container from a bundle: the only time a slice is chosen.
    pub fn creates(&self) -> bool {
        matches!(self.command.as_deref(), Some("create" | "run"))
    }
}

/// An argument gpuslice-runtime cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("{CONFIG_FLAG} needs a path (--gpuslice-config=/etc/gpuslice/config.toml)")]
    ConfigWithoutValue,
}

/// `--name`, `-name`, `--name=value`: the name and the inline value.
fn flag(arg: &str) -> Option<(&str, Option<&str>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() {
        return None;
    }
    Some(match body.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (body, None),
    })
}

/// Splits the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, ArgsError> {
    let mut inv = Invocation::default();
    let mut args = args.into_iter();
    // Global flags, up to the command.
    while let Some(arg) = args.next() {
        let text = arg.to_str().map(str::to_owned);
        let Some(text) = text else {
            inv.runtime_args.push(arg);
            continue;
        };
        if text == CONFIG_FLAG {
            inv.config = Some(args.next().map(PathBuf::from).ok_or(ArgsError::ConfigWithoutValue)?);
            continue;
        }
        if let Some(path) = text.strip_prefix(CONFIG_FLAG).and_then(|rest| rest.strip_prefix('=')) {
            if path.is_empty() {
                return Err(ArgsError::ConfigWithoutValue);
            }
            inv.config = Some(PathBuf::from(path));
            continue;
        }
        inv.runtime_args.push(arg);
        match flag(&text) {
            Some((name, inline)) => {
                if !GLOBAL_VALUED.contains(&name) {
                    continue;
                }
                let value = match inline {
                    Some(v) => Some(v.to_owned()),
                    None => args
                        .next()
                        .inspect(|v| inv.runtime_args.push(v.clone()))
                        .map(|v| v.to_string_lossy().into_owned()),
                };
                match name {
                    "log" => inv.log = value.map(PathBuf::from),
                    "log-format" => inv.log_format = value,
                    _ => {}
                }
            }
            None => {
                inv.command = Some(text);
                break;
            }
        }
    }
    // The command's flags, up to its first positional argument (the container id).
    let creates = inv.creates();
    while let Some(arg) = args.next() {
        let text = arg.to_str().map(str::to_owned);
        inv.runtime_args.push(arg);
        if !creates {
            continue;
        }
        let Some((name, inline)) = text.as_deref().and_then(flag) else {
            // The container id: flags after it are not the command's (urfave/cli stops there).
            inv.runtime_args.extend(args.by_ref());
            break;
        };
        let valued = name == "bundle" || name == "b" || CREATE_VALUED.contains(&name);
        let value = match (valued, inline) {
            (false, _) => None,
            (true, Some(v)) => Some(OsString::from(v)),
            (true, None) => args.next().inspect(|v| inv.runtime_args.push(v.clone())),
        };
        if name == "bundle" || name == "b" {
            inv.bundle = value.map(PathBuf::from);
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Invocation {
        parse(args.iter().map(OsString::from)).unwrap()
    }

    fn strings(inv: &Invocation) -> Vec<String> {
        inv.runtime_args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn containerd_shim_create() {
        let args = [
            "--root",
            "/run/containerd/runc/k8s.io",
            "--log",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc",
            "--pid-file",
            "/run/x/init.pid",
            "abc",
        ];
        let inv = parse_str(&args);
        assert_eq!(inv.command.as_deref(), Some("create"));
        assert!(inv.creates());
        assert_eq!(inv.bundle, Some(PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc")));
        assert_eq!(inv.log, Some(PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/log.json")));
        assert_eq!(inv.log_format.as_deref(), Some("json"));
        assert_eq!(strings(&inv), args);
        assert_eq!(inv.config, None);
    }

    #[test]
    fn our_flag_is_taken_out_wherever_it_comes_before_the_command() {
        let inv = parse_str(&["--gpuslice-config=/tmp/g.toml", "--root=/r", "run", "-b", "/bundle", "-d", "id"]);
        assert_eq!(inv.config, Some(PathBuf::from("/tmp/g.toml")));
        assert_eq!(strings(&inv), ["--root=/r", "run", "-b", "/bundle", "-d", "id"]);
        assert_eq!(inv.bundle, Some(PathBuf::from("/bundle")));
        let inv = parse_str(&["--root", "/r", "--gpuslice-config", "/tmp/g.toml", "create", "--bundle=/b", "id"]);
        assert_eq!(inv.config, Some(PathBuf::from("/tmp/g.toml")));
        assert_eq!(inv.bundle, Some(PathBuf::from("/b")));
        assert_eq!(strings(&inv), ["--root", "/r", "create", "--bundle=/b", "id"]);
        assert_eq!(parse(["--gpuslice-config".into()]), Err(ArgsError::ConfigWithoutValue));
        assert_eq!(parse(["--gpuslice-config=".into()]), Err(ArgsError::ConfigWithoutValue));
    }

    #[test]
    fn a_flag_value_is_never_the_command() {
        // `--root create` would otherwise look like the command `create`.
        let inv = parse_str(&["--root", "create", "state", "id"]);
        assert_eq!(inv.command.as_deref(), Some("state"));
        assert!(!inv.creates());
        let inv = parse_str(&["--debug", "--systemd-cgroup", "create", "--console-socket", "-b", "id"]);
        assert_eq!(inv.bundle, None, "-b was the console socket's value");
    }

    #[test]
    fn only_create_and_run_have_a_bundle() {
        let inv = parse_str(&["exec", "--bundle", "/x", "id"]);
        assert_eq!(inv.bundle, None);
        assert_eq!(strings(&inv), ["exec", "--bundle", "/x", "id"]);
        let inv = parse_str(&["create", "id", "--bundle", "/after-the-id"]);
        assert_eq!(inv.bundle, None, "urfave/cli stops at the first positional argument");
        assert_eq!(strings(&inv), ["create", "id", "--bundle", "/after-the-id"]);
        let inv = parse_str(&["--version"]);
        assert_eq!((inv.command, strings(&parse_str(&["--version"]))), (None, vec!["--version".to_owned()]));
    }
}
