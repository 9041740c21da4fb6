//! `gpuslice-cdi setup ENGINE`: turns CDI on in a container engine's config.
//!
//! No package script edits an engine's config; an operator runs this once. Each engine is a
//! pure function from the old file's text to the new one ([`docker`], [`containerd`]), so the
//! edit is tested without touching `/etc`; [`setup`] reads, edits, backs up the old file and
//! writes the new one atomically, or only prints the change with `dry_run`. Running it again
//! changes nothing. For engines without CDI, `--runtime` registers `gpuslice-runtime` instead,
//! and `--swarm` sets Docker up for Swarm's generic resources ([`runtime`]).

pub mod runtime;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use toml_edit::{Array, DocumentMut, Item, Table, value};

/// The engines `setup` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Docker,
    Containerd,
    Podman,
}

impl Engine {
    /// The config file edited when no other is named.
    pub fn default_file(self) -> Option<&'static Path> {
        match self {
            Engine::Docker => Some(Path::new("/etc/docker/daemon.json")),
            Engine::Containerd => Some(Path::new("/etc/containerd/config.toml")),
            Engine::Podman => None,
        }
    }

    fn restart_hint(self) -> &'static str {
        match self {
            Engine::Docker => "restart dockerd for it to take effect (systemctl restart docker)",
            Engine::Containerd => "restart containerd for it to take effect (systemctl restart containerd)",
            Engine::Podman => "",
        }
    }
}

/// The CDI spec directories an engine reads by default; gpuslice's own spec dir is added.
pub const DEFAULT_CDI_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// What to set up in the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// CDI on (the default).
    Cdi,
    /// The runtime `gpuslice` (gpuslice-runtime at this path), for engines without CDI.
    Runtime(PathBuf),
    /// Docker Swarm: the runtime, as the default, and these slices as generic resources.
    Swarm(PathBuf, Vec<String>),
}

impl Mode {
    fn done(&self) -> &'static str {
        match self {
            Mode::Cdi => "CDI turned on",
            Mode::Runtime(_) => "runtime gpuslice registered",
            Mode::Swarm(..) => "runtime gpuslice made the default and the slices advertised to Swarm",
        }
    }

    fn already(&self) -> &'static str {
        match self {
            Mode::Cdi => "CDI is already on",
            Mode::Runtime(_) => "the runtime gpuslice is already registered",
            Mode::Swarm(..) => "Swarm is already set up with these slices",
        }
    }
}

/// What `setup` asks for.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub engine: Engine,
    pub mode: Mode,
    /// The engine's config file; `None` for its default.
    pub file: Option<PathBuf>,
    /// gpuslice's spec dir, which the engine must read.
    pub spec_dir: PathBuf,
    /// Print the change, write nothing.
    pub dry_run: bool,
}

/// What `setup` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The engine needs no change; the reason.
    NothingNeeded(String),
    /// `file` had what was asked for already.
    AlreadyOn { file: PathBuf, what: &'static str },
    /// `file` was (or, with `dry_run`, would be) changed; `diff` shows how.
    Changed {
        file: PathBuf,
        backup: Option<PathBuf>,
        diff: String,
        dry_run: bool,
        hint: &'static str,
        what: &'static str,
    },
}

impl Outcome {
    /// What to tell the operator.
    pub fn message(&self) -> String {
        match self {
            Outcome::NothingNeeded(why) => why.clone(),
            Outcome::AlreadyOn { file, what } => format!("{}: {what}; nothing to do", file.display()),
            Outcome::Changed { file, backup, diff, dry_run: true, .. } => {
                let _ = backup;
                format!("{}: would change (dry run, nothing written):\n{diff}", file.display())
            }
            Outcome::Changed { file, backup, diff, dry_run: false, hint, what } => {
                let saved = match backup {
                    Some(b) => format!("the old file is saved as {}", b.display()),
                    None => "there was no file before".to_string(),
                };
                format!("{}: {what}; {saved}; {hint}\n{diff}", file.display())
            }
        }
    }
}

/// Turns CDI on for `opts.engine`.
pub fn setup(opts: &SetupOptions) -> Result<Outcome> {
    let dirs = spec_dirs(&opts.spec_dir);
    let file = match (opts.engine, &opts.file) {
        (Engine::Podman, _) if opts.mode != Mode::Cdi => {
            return Ok(Outcome::NothingNeeded(
                "podman: nothing to do: podman 3.x and podman 4 without CDI take slices through the OCI hook \
                 /usr/share/containers/oci/hooks.d/gpuslice.json that the package installs: \
                 podman run --annotation gpuslice.dev/slices=slice0 …"
                    .to_owned(),
            ));
        }
        (Engine::Containerd, _) if matches!(opts.mode, Mode::Swarm(..)) => {
            bail!("--swarm is for Docker: containerd has no Swarm");
        }
        (Engine::Podman, _) => {
            return Ok(Outcome::NothingNeeded(format!(
                "podman: nothing to do: podman 4.1 and newer always read CDI specs from {}. \
                 podman before 4.7 (4.3 in Debian 12) reads specs up to CDI 0.5.0 only, which the \
                 default spec is: leave `annotations` off in /etc/gpuslice/config.toml.",
                dirs.join(" and ")
            )));
        }
        (_, Some(f)) => f.clone(),
        (engine, None) => engine.default_file().expect("docker and containerd have a default file").to_path_buf(),
    };
    let (old, mode) = match fs::read_to_string(&file) {
        Ok(text) => (Some(text), fs::metadata(&file)?.permissions().mode() & 0o7777),
        Err(e) if e.kind() == ErrorKind::NotFound => (None, 0o644),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let old_text = old.as_deref().unwrap_or("");
    let new_text = match (opts.engine, &opts.mode) {
        (Engine::Docker, Mode::Cdi) => docker(old_text),
        (Engine::Docker, Mode::Runtime(binary)) => runtime::docker(old_text, binary, None),
        (Engine::Docker, Mode::Swarm(binary, slices)) => runtime::docker(old_text, binary, Some(slices)),
        (Engine::Containerd, Mode::Cdi) => containerd(old_text, &dirs),
        (Engine::Containerd, Mode::Runtime(binary)) => runtime::containerd(old_text, binary),
        (Engine::Containerd, Mode::Swarm(..)) | (Engine::Podman, _) => unreachable!("refused above"),
    }
    .with_context(|| format!("{}", file.display()))?;
    let what = opts.mode.done();
    let Some(new_text) = new_text else {
        return Ok(Outcome::AlreadyOn { file, what: opts.mode.already() });
    };
    let diff = line_diff(old_text, &new_text);
    if opts.dry_run {
        return Ok(Outcome::Changed { file, backup: None, diff, dry_run: true, hint: "", what });
    }
    let backup = match &old {
        Some(text) => {
            let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let backup = file.with_file_name(format!("{name}.gpuslice-{secs}.bak"));
            gpuslice_core::fsutil::write_atomic(&backup, text.as_bytes(), mode)
                .with_context(|| format!("writing the backup {}", backup.display()))?;
            Some(backup)
        }
        None => {
            if let Some(dir) = file.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            None
        }
    };
    gpuslice_core::fsutil::write_atomic(&file, new_text.as_bytes(), mode)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(Outcome::Changed { file, backup, diff, dry_run: false, hint: opts.engine.restart_hint(), what })
}

/// The directories the engine must read: its defaults and gpuslice's spec dir.
fn spec_dirs(spec_dir: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = DEFAULT_CDI_DIRS.iter().map(|d| d.to_string()).collect();
    let ours = spec_dir.display().to_string();
    let ours = ours.trim_end_matches('/').to_string();
    if !dirs.contains(&ours) && !ours.is_empty() {
        dirs.push(ours);
    }
    dirs
}

/// Docker's `daemon.json` with `"features": {"cdi": true}`; `None` when it has that already.
/// Docker reads its default CDI dirs (`/etc/cdi`, `/var/run/cdi`) unless `cdi-spec-dirs` is
/// set; a file that sets it gets the defaults added.
pub fn docker(old: &str) -> Result<Option<String>> {
    let mut root: serde_json::Value = if old.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(old).context("not valid JSON")?
    };
    let Some(obj) = root.as_object_mut() else { bail!("not a JSON object") };
    let mut changed = false;
    let features = obj.entry("features").or_insert_with(|| serde_json::json!({}));
    let Some(features) = features.as_object_mut() else { bail!("\"features\" is not an object") };
    if features.get("cdi") != Some(&serde_json::Value::Bool(true)) {
        features.insert("cdi".into(), serde_json::Value::Bool(true));
        changed = true;
    }
    if let Some(dirs) = obj.get_mut("cdi-spec-dirs") {
        let Some(list) = dirs.as_array_mut() else { bail!("\"cdi-spec-dirs\" is not a list") };
        for dir in DEFAULT_CDI_DIRS {
            if !list.iter().any(|d| d.as_str() == Some(dir)) {
                list.push(dir.into());
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    Ok(Some(serde_json::to_string_pretty(&root)? + "\n"))
}

/// containerd's `config.toml` with CDI on for its CRI plugin; `None` when it is on already with
/// every one of `dirs`. Comments and the rest of the file are kept. Config version 2
/// (containerd 1.7) and a new file: `[plugins."io.containerd.grpc.v1.cri"]`; version 3
/// (containerd 2.x, where CDI is on by default): `[plugins."io.containerd.cri.v1.runtime"]`;
/// a file without `version` is version 1: `[plugins.cri]`.
pub fn containerd(old: &str, dirs: &[String]) -> Result<Option<String>> {
    let mut doc: DocumentMut = old.parse().context("not valid TOML")?;
    let version = containerd_version(&mut doc, old)?;
    let plugin = cri_plugin(version);
    let plugins = table_in(doc.as_table_mut(), "plugins")?;
    let cri = table_in(plugins, plugin)?;
    let mut changed = false;
    if cri.get("enable_cdi").and_then(Item::as_bool) != Some(true) {
        cri["enable_cdi"] = value(true);
        changed = true;
    }
    match cri.get_mut("cdi_spec_dirs") {
        None => {
            cri["cdi_spec_dirs"] = value(dirs.iter().map(String::as_str).collect::<Array>());
            changed = true;
        }
        Some(item) => {
            let Some(list) = item.as_array_mut() else { bail!("{plugin}.cdi_spec_dirs is not a list") };
            for dir in dirs {
                if !list.iter().any(|d| d.as_str() == Some(dir.as_str())) {
                    list.push(dir.as_str());
                    changed = true;
                }
            }
        }
    }
    Ok(changed.then(|| doc.to_string()))
}

/// The config's `version`: 2 for a new file (written into it), 1 when a file has none.
fn containerd_version(doc: &mut DocumentMut, old: &str) -> Result<i64> {
    Ok(match doc.get("version") {
        None if old.trim().is_empty() => {
            doc["version"] = value(2);
            2
        }
        None => 1,
        Some(v) => match v.as_integer() {
            Some(n @ 1..=3) => n,
            _ => bail!("version = {v}: expected 1, 2 or 3"),
        },
    })
}

/// The CRI plugin's table for a config version (3: the runtime half of containerd 2's CRI).
fn cri_plugin(version: i64) -> &'static str {
    match version {
        1 => "cri",
        2 => "io.containerd.grpc.v1.cri",
        _ => "io.containerd.cri.v1.runtime",
    }
}

/// The table `key` inside `parent`, made (as a `[header]` table) when missing.
fn table_in<'a>(parent: &'a mut Table, key: &str) -> Result<&'a mut Table> {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    if let Some(inline) = item.as_inline_table() {
        *item = Item::Table(inline.clone().into_table());
    }
    item.as_table_mut().with_context(|| format!("{key} is not a table"))
}

/// A line diff (`-` old, `+` new, two spaces unchanged), only changed lines and one line of
/// context around them; enough to show a config edit.
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(1);
        let hi = (k + 1).min(ops.len() - 1);
        (lo..=hi).any(|m| ops[m].0 != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (tag, line)) in ops.iter().enumerate() {
        if near_change(k) {
            if skipped && !out.is_empty() {
                out.push_str("  …\n");
            }
            skipped = false;
            out.push(*tag);
            out.push(' ');
            out.push_str(line);
            out.push('\n');
        } else {
            skipped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Vec<String> {
        spec_dirs(Path::new("/var/run/cdi"))
    }

    #[test]
    fn docker_new_file_gets_features_cdi() {
        let new = docker("").unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v, serde_json::json!({"features": {"cdi": true}}));
    }

    #[test]
    fn docker_keeps_other_keys_and_is_idempotent() {
        let old = r#"{"log-driver": "journald", "features": {"buildkit": true}}"#;
        let new = docker(old).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&new).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(v["features"]["buildkit"], true);
        assert_eq!(v["features"]["cdi"], true);
        assert_eq!(docker(&new).unwrap(), None);
    }

    #[test]
    fn docker_adds_default_dirs_to_an_explicit_list() {
        let old = r#"{"features": {"cdi": true}, "cdi-spec-dirs": ["/opt/cdi"]}"#;
        let v: serde_json::Value = serde_json::from_str(&docker(old).unwrap().unwrap()).unwrap();
        assert_eq!(v["cdi-spec-dirs"], serde_json::json!(["/opt/cdi", "/etc/cdi", "/var/run/cdi"]));
    }

    #[test]
    fn docker_refuses_what_it_cannot_edit() {
        assert!(docker("[1]").is_err());
        assert!(docker("{").is_err());
        assert!(docker(r#"{"features": true}"#).is_err());
    }

    #[test]
    fn containerd_new_file_is_version_2() {
        let new = containerd("", &dirs()).unwrap().unwrap();
        let doc: toml::Table = toml::from_str(&new).unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["enable_cdi"].as_bool(), Some(true));
        assert_eq!(cri["cdi_spec_dirs"].as_array().unwrap().len(), 2);
        assert_eq!(containerd(&new, &dirs()).unwrap(), None);
    }

    #[test]
    fn containerd_keeps_comments_and_other_settings() {
        let old = "# my containerd\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
                   sandbox_image = \"pause:3.9\" # pinned\n  enable_cdi = false\n";
        let new = containerd(old, &dirs()).unwrap().unwrap();
        assert!(new.contains("# my containerd"), "{new}");
        assert!(new.contains("sandbox_image = \"pause:3.9\" # pinned"), "{new}");
        let doc: toml::Table = toml::from_str(&new).unwrap();
        assert_eq!(doc["plugins"]["io.containerd.grpc.v1.cri"]["enable_cdi"].as_bool(), Some(true));
        assert_eq!(containerd(&new, &dirs()).unwrap(), None);
    }

    #[test]
    fn containerd_version_3_and_1_use_their_plugin_ids() {
        let new = containerd("version = 3\n", &dirs()).unwrap().unwrap();
        assert!(new.contains("[plugins.\"io.containerd.cri.v1.runtime\"]"), "{new}");
        let new = containerd("root = \"/var/lib/containerd\"\n", &dirs()).unwrap().unwrap();
        assert!(new.contains("[plugins.cri]"), "{new}");
        assert!(containerd("version = 7\n", &dirs()).is_err());
    }

    #[test]
    fn containerd_adds_a_custom_spec_dir_once() {
        let dirs = spec_dirs(Path::new("/run/gpuslice-cdi/"));
        let new = containerd("", &dirs).unwrap().unwrap();
        assert!(new.contains("/run/gpuslice-cdi\""), "{new}");
        assert_eq!(containerd(&new, &dirs).unwrap(), None);
    }

    #[test]
    fn diff_shows_only_changes_with_context() {
        let d = line_diff("a\nb\nc\nd\ne\n", "a\nb\nC\nd\ne\n");
        assert_eq!(d, "  b\n- c\n+ C\n  d\n");
    }
}
