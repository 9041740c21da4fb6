//! The plugin's life: wait for the kubelet, serve and register each resource, follow the node
//! and the kubelet, stop on a signal.
//!
//! Each resource is served on `<dir>/gpuslice-<name>.sock` and registered with
//! `<dir>/kubelet.sock`. Every `interval` the node is scanned again ([`Scanner::scan`]): new
//! resources are served and registered, gone ones stopped and their sockets removed, and every
//! `ListAndWatch` stream sees the change. A restarted kubelet deletes the plugins' sockets and
//! makes a new `kubelet.sock`; either is noticed at the next scan, and every resource is then
//! served and registered again. SIGTERM or SIGINT stops everything, removes the sockets and
//! returns `Ok`; a registration the kubelet refuses is an error (the plugin exits non-zero, as
//! the kubelet's API expects, and its supervisor restarts it).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpuslice_core::config::Config;
use tokio::net::UnixListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::RegisterRequest;
use crate::api::device_plugin_server::DevicePluginServer;
use crate::api::registration_client::RegistrationClient;
use crate::inventory::{Scanner, Snapshot, resource_short_name};
use crate::server::{ResourceService, options};

/// The kubelet's socket in its device plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The API version registered.
pub const API_VERSION: &str = "v1beta1";
/// How long a registration may take before the kubelet counts as unreachable.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Scans in a row a resource must be without devices before it is stopped.
const GONE_AFTER_SCANS: u32 = 3;
/// The longest wait between two looks for `kubelet.sock`.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the plugin stopped other than by a signal.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the kubelet refused to register {resource}: {message}")]
    Refused { resource: String, message: String },
    #[error("serving {resource} on {path}: {source}")]
    Serve { resource: String, path: PathBuf, source: std::io::Error },
    #[error("setting up signal handling: {0}")]
    Signals(std::io::Error),
}

/// The socket a resource is served on: `gpuslice-<name>.sock`.
pub fn socket_name(resource: &str) -> String {
    format!("gpuslice-{}.sock", resource_short_name(resource))
}

/// What the plugin needs to run.
#[derive(Debug)]
pub struct Plugin {
    pub config: Config,
    pub dir: PathBuf,
    pub scanner: Scanner,
}

/// One resource being served.
struct Served {
    path: PathBuf,
    ino: u64,
    tx: watch::Sender<Arc<Snapshot>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// Scans in a row that found no device of it.
    absent: u32,
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// `(device, inode)` of a file, if it exists.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Plugin {
    /// Runs until a signal (`Ok`) or a refused registration (`Err`).
    pub async fn run(mut self) -> Result<(), RunError> {
        let mut signals = Signals {
            term: signal(SignalKind::terminate()).map_err(RunError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(RunError::Signals)?,
        };
        let kubelet_sock = self.dir.join(KUBELET_SOCKET);
        let interval = self.config.kubernetes.interval.0;
        // Registrations that found no kubelet listening, in a row.
        let mut unreachable = 0u32;
        loop {
            // Wait for the kubelet, saying so once.
            let mut backoff = Duration::from_millis(50).min(interval);
            let mut said = false;
            let kubelet = loop {
                if let Some(id) = identity(&kubelet_sock) {
                    break id;
                }
                if !said {
                    tracing::info!(path = ?kubelet_sock, "waiting for the kubelet's socket");
                    said = true;
                }
                if let Some(name) = sleep_or_signal(backoff, &mut signals).await {
                    tracing::info!(signal = name, "stopping");
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            };
            let mut served: BTreeMap<String, Served> = BTreeMap::new();
            let outcome = self.serve(&kubelet_sock, kubelet, &mut served, &mut signals, &mut unreachable).await;
            stop_all(&mut served).await;
            match outcome? {
                Stop::Signal => return Ok(()),
                Stop::KubeletRestarted => {}
                Stop::Unreachable(e) => {
                    // A kubelet.sock nobody listens on (a kubelet that is restarting, or died):
                    // try again, less and less often, saying so once.
                    if unreachable == 0 {
                        tracing::warn!(path = ?kubelet_sock, %e, "the kubelet cannot be reached; waiting for it");
                    }
                    unreachable = unreachable.saturating_add(1);
                    let wait = (Duration::from_millis(50) * 2u32.saturating_pow(unreachable.min(7))).min(MAX_BACKOFF);
                    if let Some(name) = sleep_or_signal(wait, &mut signals).await {
                        tracing::info!(signal = name, "stopping");
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn serve(
        &mut self,
        kubelet_sock: &Path,
        kubelet: (u64, u64),
        served: &mut BTreeMap<String, Served>,
        signals: &mut Signals,
        unreachable: &mut u32,
    ) -> Result<Stop, RunError> {
        let interval = self.config.kubernetes.interval.0;
        loop {
            let snapshot = Arc::new(self.scanner.scan());
            for (resource, s) in served.iter_mut() {
                s.tx.send_replace(snapshot.clone());
                s.absent = if snapshot.resources.contains_key(resource) { 0 } else { s.absent + 1 };
            }
            // `generate` writes the limits before the spec: a scan between the two can see a
            // resource empty that the new spec still has. Only a resource empty for several
            // scans in a row is gone (until then its list is empty).
            let gone: Vec<String> =
                served.iter().filter(|(_, s)| s.absent >= GONE_AFTER_SCANS).map(|(r, _)| r.clone()).collect();
            for resource in gone {
                if let Some(s) = served.remove(&resource) {
                    tracing::info!(%resource, "no devices left; stopped serving it");
                    stop(s).await;
                }
            }
            for resource in snapshot.resources.keys() {
                if served.contains_key(resource) {
                    continue;
                }
                let s = self.start(resource, snapshot.clone())?;
                served.insert(resource.clone(), s);
                match register(kubelet_sock, resource).await {
                    Ok(()) => {
                        tracing::info!(%resource, socket = %socket_name(resource), "registered with the kubelet");
                        *unreachable = 0;
                    }
                    Err(Register::Refused(message)) => {
                        return Err(RunError::Refused { resource: resource.clone(), message });
                    }
                    Err(Register::Unreachable(e)) => return Ok(Stop::Unreachable(e)),
                }
            }
            if let Some(name) = sleep_or_signal(interval, signals).await {
                tracing::info!(signal = name, "stopping");
                return Ok(Stop::Signal);
            }
            if identity(kubelet_sock) != Some(kubelet) {
                tracing::info!("the kubelet restarted (new kubelet.sock); registering again");
                return Ok(Stop::KubeletRestarted);
            }
            if let Some((resource, _)) =
                served.iter().find(|(_, s)| std::fs::symlink_metadata(&s.path).map(|m| m.ino()).ok() != Some(s.ino))
            {
                tracing::info!(%resource, "the plugin's socket was removed (a kubelet restart); registering again");
                return Ok(Stop::KubeletRestarted);
            }
        }
    }

    fn start(&self, resource: &str, snapshot: Arc<Snapshot>) -> Result<Served, RunError> {
        let path = self.dir.join(socket_name(resource));
        let io_err = |source| RunError::Serve { resource: resource.to_owned(), path: path.clone(), source };
        // A socket left by an earlier run of this plugin.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&path).map_err(io_err)?;
        let ino = std::fs::symlink_metadata(&path).map_err(io_err)?.ino();
        let (tx, rx) = watch::channel(snapshot);
        let service = ResourceService {
            resource: resource.to_owned(),
            allocation: self.config.kubernetes.allocation,
            snapshot: rx,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shown = resource.to_owned();
        let task = tokio::spawn(async move {
            let server = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                });
            if let Err(e) = server.await {
                tracing::error!(resource = %shown, %e, "server failed");
            }
        });
        Ok(Served { path, ino, tx, stop, task, absent: 0 })
    }
}

enum Stop {
    Signal,
    KubeletRestarted,
    Unreachable(String),
}

/// Sleeps for `d`; the name of a signal that came first.
async fn sleep_or_signal(d: Duration, signals: &mut Signals) -> Option<&'static str> {
    tokio::select! {
        () = tokio::time::sleep(d) => None,
        name = signals.recv() => Some(name),
    }
}

enum Register {
    Refused(String),
    Unreachable(String),
}

async fn register(kubelet_sock: &Path, resource: &str) -> Result<(), Register> {
    let call = async {
        let channel =
            crate::uds::connect(kubelet_sock.to_owned()).await.map_err(|e| Register::Unreachable(e.to_string()))?;
        let request = RegisterRequest {
            version: API_VERSION.to_owned(),
            endpoint: socket_name(resource),
            resource_name: resource.to_owned(),
            options: Some(options()),
        };
        RegistrationClient::new(channel).register(request).await.map(drop).map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                Register::Unreachable(s.message().to_owned())
            } else {
                Register::Refused(format!("{}: {}", s.code(), s.message()))
            }
        })
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Register::Unreachable("no answer within 10s".to_owned())))
}

/// Stops one server: its streams end, it shuts down, its socket is removed if it is still ours.
async fn stop(s: Served) {
    drop(s.tx);
    let _ = s.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), s.task).await;
    if std::fs::symlink_metadata(&s.path).is_ok_and(|m| m.ino() == s.ino) {
        let _ = std::fs::remove_file(&s.path);
    }
}

async fn stop_all(served: &mut BTreeMap<String, Served>) {
    for (_, s) in std::mem::take(served) {
        stop(s).await;
    }
}
