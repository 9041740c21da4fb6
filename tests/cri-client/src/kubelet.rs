//! `gpuslice-cri-client kubelet`: the kubelet's half of the device plugin API, then its CRI
//! half, for the end-to-end tests.
//!
//! ```text
//! gpuslice-cri-client kubelet --dir DIR [--resource NAME] [--count N | --device ID…]
//!     [--cdi field|annotations|both] [--register-timeout SECONDS]
//!     [--socket CRI_SOCKET … run options … IMAGE -- COMMAND [ARG…]]
//! ```
//!
//! One pass of what the kubelet's device manager does for a pod asking for N devices:
//!
//! 1. removes the sockets in DIR (as a starting kubelet does: plugins register again), serves
//!    `Registration` on `DIR/kubelet.sock` and waits for the plugin of `--resource`
//!    (default `gpuslice.dev/vgpu`) to register (version `v1beta1`; other resources that
//!    register meanwhile are printed and left alone);
//! 2. dials the plugin back on `DIR/<endpoint>`, asks `GetDevicePluginOptions`, opens
//!    `ListAndWatch` and reads device lists until N devices are healthy;
//! 3. with `--count N`: `GetPreferredAllocation` over the healthy devices when the plugin
//!    offers it (else the first N, as the kubelet does); with `--device`: those IDs as they are,
//!    checked by no one but the plugin (a test of its answers to unknown IDs);
//! 4. `Allocate` for one container, and `PreStartContainer` when the plugin asks for it;
//! 5. with an image and command: the container through the CRI (`super::run`) with the answer
//!    mapped as the kubelet maps it (`kuberuntime_container.go`): CDI names into
//!    `ContainerConfig.CDIDevices`, annotations into the container's annotations, variables,
//!    mounts and device nodes into theirs. `--cdi field` passes only the CDI names,
//!    `--cdi annotations` only the annotations (what a kubelet before 1.28 does), to find out
//!    which of the two a runtime applies.
//!
//! Everything the kubelet learns is printed on stderr as `kubelet: …` lines; the container's
//! output goes to stdout. A gRPC error from the plugin prints
//! `kubelet: <Call>: <code>: <message>` and exits 125, like a CRI error.

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::Args;

#[allow(clippy::all, missing_debug_implementations)]
mod api {
    tonic::include_proto!("v1beta1");
}

use api::device_plugin_client::DevicePluginClient;
use api::registration_server::{Registration, RegistrationServer};

/// What the kubelet subcommand adds to the run's options.
#[derive(Debug)]
pub struct Options {
    dir: PathBuf,
    resource: String,
    count: usize,
    devices: Vec<String>,
    cdi: CdiPath,
    register_timeout: Duration,
}

/// Which parts of the answer that name CDI devices reach the runtime.
#[derive(Debug, Clone, Copy, PartialEq)]
enum CdiPath {
    Field,
    Annotations,
    Both,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: PathBuf::new(),
            resource: "gpuslice.dev/vgpu".to_owned(),
            count: 1,
            devices: Vec::new(),
            cdi: CdiPath::Both,
            register_timeout: Duration::from_secs(30),
        }
    }
}

impl Options {
    /// Takes one of the kubelet's options; any other is an error.
    pub fn option(&mut self, flag: &str, value: String) -> Result<(), String> {
        match flag {
            "--dir" => self.dir = value.into(),
            "--resource" => self.resource = value,
            "--count" => self.count = value.parse().map_err(|_| format!("--count {value}"))?,
            "--device" => self.devices.push(value),
            "--cdi" => {
                self.cdi = match value.as_str() {
                    "field" => CdiPath::Field,
                    "annotations" => CdiPath::Annotations,
                    "both" => CdiPath::Both,
                    _ => return Err(format!("--cdi {value}: expected field, annotations or both")),
                }
            }
            "--register-timeout" => {
                self.register_timeout =
                    Duration::from_secs(value.parse().map_err(|_| format!("--register-timeout {value}"))?)
            }
            _ => return Err(format!("unknown option {flag}")),
        }
        Ok(())
    }
}

/// The kubelet's registration service: every request goes to the waiting `run`.
#[derive(Debug)]
struct Registrar(mpsc::UnboundedSender<api::RegisterRequest>);

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(&self, request: Request<api::RegisterRequest>) -> Result<Response<api::Empty>, Status> {
        let r = request.into_inner();
        // The kubelet's own checks (pkg/kubelet/cm/devicemanager/plugin/v1beta1/server.go).
        if r.version != "v1beta1" {
            return Err(Status::invalid_argument(format!("unsupported API version {:?}", r.version)));
        }
        if !r.resource_name.contains('/') || r.endpoint.is_empty() || r.endpoint.contains('/') {
            return Err(Status::invalid_argument(format!(
                "invalid registration: resource {:?}, endpoint {:?}",
                r.resource_name, r.endpoint
            )));
        }
        self.0.send(r).map_err(|_| Status::unavailable("the kubelet is stopping"))?;
        Ok(Response::new(api::Empty {}))
    }
}

fn grpc_error(call: &str, status: &Status) -> String {
    format!("kubelet: {call}: {:?}: {}", status.code(), status.message().replace('\n', " "))
}

fn health_line(devices: &[api::Device]) -> String {
    let list: Vec<String> = devices.iter().map(|d| format!("{}={}", d.id, d.health)).collect();
    list.join(" ")
}

pub async fn run(o: Options, mut a: Args) -> Result<i32, String> {
    if o.dir.as_os_str().is_empty() {
        return Err("kubelet: --dir is required".to_owned());
    }
    let socket = o.dir.join("kubelet.sock");
    // A kubelet that starts removes every socket in the directory, its own and the plugins'
    // (the device manager's start, which keeps only its checkpoint file); a plugin that sees
    // its socket gone, or a new kubelet.sock, registers again.
    let entries = std::fs::read_dir(&o.dir).map_err(|e| format!("kubelet: reading {}: {e}", o.dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_socket()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let listener =
        tokio::net::UnixListener::bind(&socket).map_err(|e| format!("kubelet: binding {}: {e}", socket.display()))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Registrar(tx)))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let result = allocate_and_run(&o, &mut a, &mut rx).await;
    server.abort();
    let _ = std::fs::remove_file(&socket);
    result
}

async fn allocate_and_run(
    o: &Options,
    a: &mut Args,
    rx: &mut mpsc::UnboundedReceiver<api::RegisterRequest>,
) -> Result<i32, String> {
    let deadline = Instant::now() + o.register_timeout;
    let registration = loop {
        let r = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .map_err(|_| {
                format!("kubelet: no plugin registered {} within {} s", o.resource, o.register_timeout.as_secs())
            })?
            .ok_or("kubelet: the registration service stopped")?;
        let options = r.options.clone().unwrap_or_default();
        eprintln!(
            "kubelet: registered {} version={} endpoint={} pre_start_required={} get_preferred_allocation_available={}",
            r.resource_name,
            r.version,
            r.endpoint,
            options.pre_start_required,
            options.get_preferred_allocation_available
        );
        if r.resource_name == o.resource {
            break r;
        }
    };

    let endpoint = o.dir.join(&registration.endpoint);
    let mut plugin = DevicePluginClient::new(crate::unix_channel(endpoint).await?);
    let options = plugin
        .get_device_plugin_options(api::Empty {})
        .await
        .map_err(|e| grpc_error("GetDevicePluginOptions", &e))?
        .into_inner();
    let mut stream =
        plugin.list_and_watch(api::Empty {}).await.map_err(|e| grpc_error("ListAndWatch", &e))?.into_inner();
    let wanted = if o.devices.is_empty() { o.count } else { 0 };
    let healthy: Vec<String> = loop {
        let list = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .map_err(|_| format!("kubelet: ListAndWatch: fewer than {wanted} healthy devices within the deadline"))?
            .map_err(|e| grpc_error("ListAndWatch", &e))?
            .ok_or("kubelet: ListAndWatch: the plugin closed the stream")?;
        eprintln!("kubelet: devices {}", health_line(&list.devices));
        let healthy: Vec<String> =
            list.devices.iter().filter(|d| d.health == "Healthy").map(|d| d.id.clone()).collect();
        if healthy.len() >= wanted {
            break healthy;
        }
    };

    let ids = if !o.devices.is_empty() {
        o.devices.clone()
    } else if options.get_preferred_allocation_available {
        let answer = plugin
            .get_preferred_allocation(api::PreferredAllocationRequest {
                container_requests: vec![api::ContainerPreferredAllocationRequest {
                    available_device_i_ds: healthy.clone(),
                    must_include_device_i_ds: Vec::new(),
                    allocation_size: i32::try_from(o.count).map_err(|_| "--count too large")?,
                }],
            })
            .await
            .map_err(|e| grpc_error("GetPreferredAllocation", &e))?
            .into_inner();
        let ids = answer.container_responses.into_iter().next().map(|r| r.device_i_ds).unwrap_or_default();
        eprintln!("kubelet: preferred {}", ids.join(" "));
        // The kubelet takes the preference only when it is a valid answer.
        if ids.len() == o.count && ids.iter().all(|id| healthy.contains(id)) {
            ids
        } else {
            eprintln!("kubelet: preference ignored (not {} healthy devices)", o.count);
            healthy[..o.count].to_vec()
        }
    } else {
        healthy[..o.count].to_vec()
    };

    let answer = plugin
        .allocate(api::AllocateRequest {
            container_requests: vec![api::ContainerAllocateRequest { devices_ids: ids.clone() }],
        })
        .await
        .map_err(|e| grpc_error("Allocate", &e))?
        .into_inner();
    let [response] = <[api::ContainerAllocateResponse; 1]>::try_from(answer.container_responses)
        .map_err(|r| format!("kubelet: Allocate: {} container responses for 1 container request", r.len()))?;
    print_answer(&ids, &response);
    if options.pre_start_required {
        plugin
            .pre_start_container(api::PreStartContainerRequest { devices_ids: ids.clone() })
            .await
            .map_err(|e| grpc_error("PreStartContainer", &e))?;
        eprintln!("kubelet: pre-started {}", ids.join(" "));
    }
    if a.command.is_empty() {
        return Ok(0);
    }

    if o.cdi != CdiPath::Annotations {
        a.cdi_devices.extend(response.cdi_devices.iter().map(|d| d.name.clone()));
    }
    a.annotations.extend(
        response
            .annotations
            .iter()
            .filter(|(k, _)| o.cdi != CdiPath::Field || !k.starts_with("cdi.k8s.io/"))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    a.envs.extend(response.envs.iter().map(|(k, v)| (k.clone(), v.clone())));
    a.mounts.extend(response.mounts.iter().map(|m| (m.host_path.clone(), m.container_path.clone(), m.read_only)));
    a.devices.extend(
        response.devices.iter().map(|d| (d.host_path.clone(), d.container_path.clone(), d.permissions.clone())),
    );
    crate::run(std::mem::take(a)).await
}

/// One line per part of the answer, sorted, so a test can look for each.
fn print_answer(ids: &[String], r: &api::ContainerAllocateResponse) {
    eprintln!("kubelet: allocated {}", ids.join(" "));
    for d in &r.cdi_devices {
        eprintln!("kubelet: cdi_device {}", d.name);
    }
    for (k, v) in r.annotations.iter().collect::<BTreeMap<_, _>>() {
        eprintln!("kubelet: annotation {k}={v}");
    }
    for (k, v) in r.envs.iter().collect::<BTreeMap<_, _>>() {
        eprintln!("kubelet: env {k}={v}");
    }
    for m in &r.mounts {
        eprintln!("kubelet: mount {}:{}{}", m.host_path, m.container_path, if m.read_only { ":ro" } else { "" });
    }
    for d in &r.devices {
        eprintln!("kubelet: device {}:{}:{}", d.host_path, d.container_path, d.permissions);
    }
}
