//! `gpuslice-cri-client`: runs one container through a CRI runtime service (containerd's CRI
//! plugin) the way the kubelet does, for the end-to-end tests.
//!
//! ```text
//! gpuslice-cri-client --socket PATH [--runtime-handler NAME] [--cdi-device KIND=NAME]…
//!     [--annotation K=V]… [--pod-annotation K=V]… [--env K=V]… [--mount HOST:CONTAINER[:ro]]…
//!     [--timeout SECONDS] IMAGE -- COMMAND [ARG…]
//! ```
//!
//! RunPodSandbox (host network, so no CNI is needed), CreateContainer (the image, the command,
//! the CDI devices in `CDIDevices` as the kubelet fills them from a device plugin's answer, the
//! annotations, variables and mounts), StartContainer, then ContainerStatus until the container
//! exits. The container's output is read back from its CRI log (`<time> stdout|stderr F|P
//! <text>`) and printed on this program's stdout and stderr; then RemoveContainer,
//! StopPodSandbox and RemovePodSandbox. The exit status is the container's. A CRI call that
//! fails prints `cri: <Call>: <message>` and exits 125, after removing what it made.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

mod kubelet;

#[derive(Debug, Default)]
struct Args {
    socket: PathBuf,
    runtime_handler: String,
    cdi_devices: Vec<String>,
    annotations: Vec<(String, String)>,
    pod_annotations: Vec<(String, String)>,
    envs: Vec<(String, String)>,
    mounts: Vec<(String, String, bool)>,
    /// Device nodes: host path, container path, cgroup permissions (`rwm`).
    devices: Vec<(String, String, String)>,
    timeout: Duration,
    image: String,
    command: Vec<String>,
}

fn key_value(flag: &str, v: &str) -> Result<(String, String), String> {
    v.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{flag} {v}: expected KEY=VALUE"))
}

/// Parses the run's options; with `kubelet`, also the kubelet's (`kubelet::Options::option`),
/// and the image and command become optional (without them the kubelet stops after Allocate).
fn parse_args(args: Vec<String>, mut kubelet: Option<&mut kubelet::Options>) -> Result<Args, String> {
    let mut a = Args { timeout: Duration::from_secs(60), ..Args::default() };
    let mut it = args.into_iter();
    let mut positional = Vec::new();
    while let Some(arg) = it.next() {
        if arg == "--" {
            a.command = it.by_ref().collect();
            break;
        }
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--socket" => a.socket = value.into(),
            "--runtime-handler" => a.runtime_handler = value,
            "--cdi-device" => a.cdi_devices.push(value),
            "--annotation" => a.annotations.push(key_value(&arg, &value)?),
            "--pod-annotation" => a.pod_annotations.push(key_value(&arg, &value)?),
            "--env" => a.envs.push(key_value(&arg, &value)?),
            "--mount" => {
                let parts: Vec<&str> = value.split(':').collect();
                match parts.as_slice() {
                    [host, container] => a.mounts.push(((*host).to_owned(), (*container).to_owned(), false)),
                    [host, container, "ro"] => a.mounts.push(((*host).to_owned(), (*container).to_owned(), true)),
                    _ => return Err(format!("--mount {value}: expected HOST:CONTAINER[:ro]")),
                }
            }
            "--timeout" => a.timeout = Duration::from_secs(value.parse().map_err(|_| format!("--timeout {value}"))?),
            _ => match kubelet.as_deref_mut() {
                Some(k) => k.option(&arg, value)?,
                None => return Err(format!("unknown option {arg}")),
            },
        }
    }
    match positional.as_slice() {
        [image] => a.image = image.clone(),
        [] if kubelet.is_some() && a.command.is_empty() => return Ok(a),
        _ => return Err("expected one IMAGE before --".to_owned()),
    }
    if a.socket.as_os_str().is_empty() || a.command.is_empty() {
        return Err("--socket and a command after -- are required".to_owned());
    }
    Ok(a)
}

/// A gRPC channel over a unix socket (the CRI runtime's, or a device plugin's).
async fn unix_channel(socket: PathBuf) -> Result<Channel, String> {
    let shown = socket.display().to_string();
    Endpoint::try_from("http://[::]:50051")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
        .map_err(|e| format!("connecting to {shown}: {e}"))
}

async fn connect(socket: PathBuf) -> Result<RuntimeServiceClient<Channel>, String> {
    Ok(RuntimeServiceClient::new(unix_channel(socket).await?))
}

fn cri_error(call: &str, status: &tonic::Status) -> String {
    format!("cri: {call}: {}", status.message().replace('\n', " "))
}

fn host_network() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..NamespaceOption::default()
    })
}

/// Prints a CRI log: each line is `<RFC3339 time> <stream> <tag> <text>`; `P` lines are
/// partial and continue on the next line of the same stream.
fn print_log(text: &str) {
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, stream, tag, body) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
        let end = if tag == Some("P") { "" } else { "\n" };
        if stream == Some("stderr") {
            eprint!("{body}{end}");
        } else {
            print!("{body}{end}");
        }
    }
}

async fn run(a: Args) -> Result<i32, String> {
    let mut rt = connect(a.socket.clone()).await?;
    rt.version(VersionRequest { version: "v1".to_owned() }).await.map_err(|e| cri_error("Version", &e))?;
    let logs = std::env::temp_dir().join(format!("gpuslice-cri-{}", std::process::id()));
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
    let uid = format!("gpuslice-e2e-{}", std::process::id());
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: uid.clone(),
            uid: uid.clone(),
            namespace: "gpuslice-e2e".to_owned(),
            attempt: 0,
        }),
        // A host-network pod keeps the node's UTS namespace: the kubelet sets no hostname.
        hostname: String::new(),
        log_directory: logs.display().to_string(),
        annotations: a.pod_annotations.iter().cloned().collect(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: host_network(),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    };
    let sandbox = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: a.runtime_handler.clone(),
        })
        .await
        .map_err(|e| cri_error("RunPodSandbox", &e))?
        .into_inner()
        .pod_sandbox_id;
    let result = run_container(&mut rt, &a, &sandbox, &sandbox_config, &logs).await;
    let _ = rt.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: sandbox.clone() }).await;
    let _ = rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: sandbox }).await;
    let _ = std::fs::remove_dir_all(&logs);
    result
}

async fn run_container(
    rt: &mut RuntimeServiceClient<Channel>,
    a: &Args,
    sandbox: &str,
    sandbox_config: &PodSandboxConfig,
    logs: &std::path::Path,
) -> Result<i32, String> {
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata { name: "probe".to_owned(), attempt: 0 }),
        image: Some(ImageSpec { image: a.image.clone(), ..ImageSpec::default() }),
        command: a.command[..1].to_vec(),
        args: a.command[1..].to_vec(),
        envs: a.envs.iter().map(|(key, value)| KeyValue { key: key.clone(), value: value.clone() }).collect(),
        mounts: a
            .mounts
            .iter()
            .map(|(host, container, ro)| Mount {
                host_path: host.clone(),
                container_path: container.clone(),
                readonly: *ro,
                ..Mount::default()
            })
            .collect(),
        devices: a
            .devices
            .iter()
            .map(|(host, container, permissions)| Device {
                host_path: host.clone(),
                container_path: container.clone(),
                permissions: permissions.clone(),
            })
            .collect(),
        annotations: a.annotations.iter().cloned().collect(),
        log_path: "probe.log".to_owned(),
        cdi_devices: a.cdi_devices.iter().map(|name| CdiDevice { name: name.clone() }).collect(),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: host_network(),
                ..LinuxContainerSecurityContext::default()
            }),
            ..LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    };
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .map_err(|e| cri_error("CreateContainer", &e))?
        .into_inner()
        .container_id;
    let result = start_and_wait(rt, a, &id).await;
    if let Ok(text) = std::fs::read_to_string(logs.join("probe.log")) {
        print_log(&text);
    }
    let _ = rt.remove_container(RemoveContainerRequest { container_id: id }).await;
    result
}

async fn start_and_wait(rt: &mut RuntimeServiceClient<Channel>, a: &Args, id: &str) -> Result<i32, String> {
    rt.start_container(StartContainerRequest { container_id: id.to_owned() })
        .await
        .map_err(|e| cri_error("StartContainer", &e))?;
    let deadline = Instant::now() + a.timeout;
    loop {
        let status = rt
            .container_status(ContainerStatusRequest { container_id: id.to_owned(), verbose: false })
            .await
            .map_err(|e| cri_error("ContainerStatus", &e))?
            .into_inner()
            .status
            .ok_or("cri: ContainerStatus: no status")?;
        if status.state == ContainerState::ContainerExited as i32 {
            return Ok(status.exit_code);
        }
        if Instant::now() > deadline {
            let _ = rt.stop_container(StopContainerRequest { container_id: id.to_owned(), timeout: 0 }).await;
            return Err(format!("cri: the container did not exit within {} s", a.timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let mut kubelet_options = (argv.first().map(String::as_str) == Some("kubelet")).then(|| {
        argv.remove(0);
        kubelet::Options::default()
    });
    let args = match parse_args(argv, kubelet_options.as_mut()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpuslice-cri-client: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gpuslice-cri-client: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match kubelet_options {
        Some(options) => runtime.block_on(kubelet::run(options, args)),
        None => runtime.block_on(run(args)),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(125)
        }
    }
}
