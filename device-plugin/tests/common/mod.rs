//! A test kubelet and a simulated node for the device plugin's tests.
//!
//! The node: a fake NVML config (`libfakegpu.so`), a dev root with real device nodes, a
//! gpuslice config, and the spec and state `generate` writes, all in one temporary directory.
//! `generate` runs in a child of the test binary (its `generate_child` test), so each run loads
//! the simulator afresh. The kubelet: the `Registration` service on a real `kubelet.sock` in
//! the node's device plugin directory, and clients of the plugin's sockets, as the kubelet has.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gpuslice_device_plugin::api::registration_server::{Registration, RegistrationServer};
use gpuslice_device_plugin::api::{
    Empty, ListAndWatchResponse, RegisterRequest, device_plugin_client::DevicePluginClient,
};
use tokio::net::UnixListener;
use tokio::sync::{Notify, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// How long anything the plugin should do may take here (a busy machine included).
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The env var that turns the test binary into a `generate` run (see [`generate_child`]).
pub const GENERATE_ENV: &str = "GPUSLICE_DP_TEST_GENERATE";

/// `libfakegpu.so`, built beside this test (a dev-dependency).
pub fn fake_nvml() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    for candidate in [profile_dir.join("deps/libfakegpu.so"), profile_dir.join("libfakegpu.so")] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!("libfakegpu.so not found under {}: run `cargo build -p fakegpu`", profile_dir.display());
}

/// Skips unless root: `generate` makes device nodes and zram devices.
pub fn skip_unless_root(test: &str) -> bool {
    gpuslice_test_support::skip_unless_root(test, "generating slice state (mknod, zram devices)")
}

/// The body of the `generate_child` test: `gpuslice-cdi generate` for the node named by the
/// environment, in this process; does nothing in a normal test run.
pub fn generate_child() {
    let Ok(config) = std::env::var(GENERATE_ENV) else { return };
    let sources = gpuslice_cdi::Sources {
        config_path: PathBuf::from(config),
        nvml_lib: Some(fake_nvml()),
        dev_root: PathBuf::from(std::env::var("GPUSLICE_DP_TEST_DEV_ROOT").unwrap()),
    };
    let options = gpuslice_cdi::GenerateOptions { output: None, format: None, state_dir: None };
    if let Err(e) = gpuslice_cdi::generate(&sources, &options) {
        eprintln!("generate failed: {e:#}");
        std::process::exit(3);
    }
}

pub fn uuid(i: usize) -> String {
    format!("GPU-{i:08x}-2222-3333-4444-555555555555")
}

pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Drop for Node {
    /// `generate` put each slice's region and each GPU's board on zram devices: remove them.
    fn drop(&mut self) {
        let left = gpuslice_core::state::remove_devices(&self.state_dir());
        if !left.is_empty() && !std::thread::panicking() {
            panic!("zram devices still open after the test: {left:?}");
        }
    }
}

impl Node {
    /// A node with `gpus` simulated 80 GiB GPUs, their device nodes and `nvidiactl`.
    pub fn new(gpus: usize) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut fake = String::from("driver_version = \"580.95.05\"\ncuda_version = 13000\n");
        for i in 0..gpus {
            fake += &format!(
                "[[gpu]]\nuuid = \"{}\"\nname = \"Simulated H100\"\nmemory = \"80GiB\"\nsm_count = 132\nminor = {i}\npci_bus_id = \"00000000:{:02X}:00.0\"\n",
                uuid(i),
                i + 1
            );
        }
        std::fs::write(dir.path().join("fakegpu.toml"), fake).unwrap();
        for d in ["dev", "fakegpu-state", "device-plugins"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let node = Node { dir };
        for i in 0..gpus {
            node.mknod(&format!("nvidia{i}"), 195, i as u32);
        }
        node.mknod("nvidiactl", 195, 255);
        node
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn spec_dir(&self) -> PathBuf {
        self.root().join("cdi")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }
    pub fn config_path(&self) -> PathBuf {
        self.root().join("config.toml")
    }
    pub fn plugin_dir(&self) -> PathBuf {
        self.root().join("device-plugins")
    }
    pub fn limits_path(&self, slice: &str) -> PathBuf {
        gpuslice_core::limits::limits_path(&self.state_dir(), slice)
    }

    pub fn mknod(&self, name: &str, major: u32, minor: u32) {
        let path = self.root().join("dev").join(name);
        let st = Command::new("mknod").arg(&path).arg("c").arg(major.to_string()).arg(minor.to_string()).status();
        assert!(st.unwrap().success(), "mknod {}", path.display());
    }

    /// Writes the gpuslice config: this node's paths, a short plugin interval, then `body`
    /// (which may add `[kubernetes]` keys after its own `[kubernetes]` line: see [`Self::config_k8s`]).
    pub fn config(&self, body: &str) {
        self.config_k8s("", body);
    }

    /// The config with `k8s` lines in its `[kubernetes]` table.
    pub fn config_k8s(&self, k8s: &str, body: &str) {
        let text = format!(
            "spec_dir = \"{}\"\nstate_dir = \"{}\"\nhook_path = \"/usr/bin/gpuslice-hook\"\n{body}\n[kubernetes]\ninterval = \"100ms\"\n{k8s}\n",
            self.spec_dir().display(),
            self.state_dir().display()
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Runs `gpuslice-cdi generate` for this node (in a child of the test binary).
    pub fn generate(&self) {
        let exe = std::env::current_exe().unwrap();
        let out = self
            .env(Command::new(exe).args(["generate_child", "--exact", "--nocapture"]))
            .env(GENERATE_ENV, self.config_path())
            .env("GPUSLICE_DP_TEST_DEV_ROOT", self.root())
            .output()
            .unwrap();
        assert!(out.status.success(), "generate failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("FAKEGPU_CONFIG", self.root().join("fakegpu.toml"))
            .env("FAKEGPU_STATE_DIR", self.root().join("fakegpu-state"))
            .env_remove("GPUSLICE_NVML_LIB")
            .env_remove("GPUSLICE_LOG")
    }

    /// The plugin's command line for this node.
    pub fn plugin_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpuslice-device-plugin"));
        cmd.arg("--config").arg(self.config_path()).arg("--nvml-lib").arg(fake_nvml());
        cmd.arg("--dev-root").arg(self.root()).arg("--device-plugin-dir").arg(self.plugin_dir());
        self.env(&mut cmd);
        cmd
    }

    /// Starts the plugin; its log goes to `plugin.log` in the node's directory.
    pub fn start_plugin(&self) -> Plugin {
        let log = self.root().join("plugin.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = self.plugin_command().stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Plugin { child: Some(child), log }
    }

    /// Runs the plugin to its end.
    pub fn run_plugin(&self) -> Output {
        self.plugin_command().output().unwrap()
    }
}

/// The plugin process; killed when dropped.
pub struct Plugin {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Plugin {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits for the plugin to exit, within the deadline.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "the plugin did not exit; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the test kubelet was told, and how it answers.
#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<RegisterRequest>>,
    refuse: Option<String>,
    notify: Notify,
}

struct RegistrationService(Arc<Shared>);

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        self.0.requests.lock().unwrap().push(request.into_inner());
        self.0.notify.notify_waiters();
        match &self.0.refuse {
            Some(why) => Err(Status::invalid_argument(why.clone())),
            None => Ok(Response::new(Empty {})),
        }
    }
}

/// The test kubelet: `Registration` on `<dir>/kubelet.sock`.
pub struct Kubelet {
    pub dir: PathBuf,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(dir: &Path) -> Kubelet {
        Self::start_refusing(dir, None)
    }

    /// A kubelet that answers every registration with `InvalidArgument(why)`.
    pub fn start_refusing(dir: &Path, refuse: Option<&str>) -> Kubelet {
        let path = dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let shared = Arc::new(Shared { refuse: refuse.map(str::to_owned), ..Shared::default() });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = RegistrationServer::new(RegistrationService(shared.clone()));
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Kubelet { dir: dir.to_owned(), shared, stop: Some(stop), task: Some(task) }
    }

    /// Stops serving and does what a starting kubelet does to the directory: removes every
    /// socket in it.
    pub async fn stop_and_clear(mut self) {
        self.shutdown().await;
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "sock") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn requests(&self) -> Vec<RegisterRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits for the registration of `resource` (the `n`-th, counting from 1).
    pub async fn wait_registration(&self, resource: &str, n: usize) -> RegisterRequest {
        let start = Instant::now();
        loop {
            let notified = self.shared.notify.notified();
            let found: Vec<RegisterRequest> =
                self.requests().into_iter().filter(|r| r.resource_name == resource).collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
            assert!(!left.is_zero(), "no registration {n} of {resource}; got {:?}", self.requests());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// A client of a plugin's socket, as the kubelet dials it after a registration.
    pub async fn dial(&self, endpoint: &str) -> DevicePluginClient<Channel> {
        let channel = gpuslice_device_plugin::uds::connect(self.dir.join(endpoint)).await.unwrap();
        DevicePluginClient::new(channel)
    }

    /// `ListAndWatch` on a registered resource.
    pub async fn watch(&self, endpoint: &str) -> Watch {
        let mut client = self.dial(endpoint).await;
        let stream = client.list_and_watch(Empty {}).await.unwrap().into_inner();
        Watch { stream, last: None }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One `ListAndWatch` stream, as the kubelet reads it.
pub struct Watch {
    pub stream: Streaming<ListAndWatchResponse>,
    pub last: Option<Vec<(String, String)>>,
}

impl Watch {
    /// Reads lists until one satisfies `want` (a list of `(id, health)`), within the deadline.
    pub async fn until(&mut self, what: &str, want: impl Fn(&[(String, String)]) -> bool) -> Vec<(String, String)> {
        let start = Instant::now();
        if let Some(last) = &self.last
            && want(last)
        {
            return last.clone();
        }
        loop {
            let left = DEADLINE.checked_sub(start.elapsed()).unwrap_or_default();
            let next = tokio::time::timeout(left, self.stream.message()).await;
            let list = match next {
                Ok(Ok(Some(r))) => r.devices.into_iter().map(|d| (d.id, d.health)).collect::<Vec<_>>(),
                Ok(Ok(None)) => panic!("{what}: the stream ended; last list {:?}", self.last),
                Ok(Err(e)) => panic!("{what}: the stream failed: {e}; last list {:?}", self.last),
                Err(_) => panic!("{what}: not seen within {DEADLINE:?}; last list {:?}", self.last),
            };
            self.last = Some(list.clone());
            if want(&list) {
                return list;
            }
        }
    }

    /// Waits for exactly these devices with these healths.
    pub async fn expect(&mut self, want: &[(&str, &str)]) -> Vec<(String, String)> {
        let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        self.until(&format!("{want:?}"), |l| l == want.as_slice()).await
    }
}

/// Polls `f` until it is true, within the deadline.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "{what}: not within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
