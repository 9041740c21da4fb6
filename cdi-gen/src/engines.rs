//! Which installed container engines can read a spec of a given CDI version.
//!
//! Engines vendor the CDI library at some version and refuse specs that declare a newer
//! `cdiVersion` (the devices are then "unresolvable"). The default spec is 0.5.0, which every
//! CDI engine reads; a config choice that needs more (annotations: 0.6.0) is checked against
//! the engines found in `PATH`, and `generate` warns, one line per engine that would refuse it.
//! Engines are asked only then, with `--version` (no daemon is contacted).

use std::fmt;
use std::process::Command;

use gpuslice_core::cdi::Version;

/// An engine that reads CDI specs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Podman,
    Docker,
    Containerd,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Podman, Engine::Docker, Engine::Containerd];

    /// The program asked for its version.
    pub fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "dockerd",
            Engine::Containerd => "containerd",
        }
    }

    /// The newest CDI version this engine's release reads; `None` when it reads no CDI at all
    /// (it then uses gpuslice-runtime, which reads any spec gpuslice writes).
    ///
    /// podman 4.3 (Debian 12) is checked here: it refuses 0.6.0 ("invalid version") and reads
    /// 0.5.0. podman vendors CDI 0.6 from 4.7, Docker from its first CDI release (25.0).
    /// containerd 1.7.0 vendored CDI 0.5.4 (spec 0.5.0); the 1.7 branch moved to CDI 0.6.2
    /// (containerd#9685, January 2024), first released in 1.7.13. containerd 1.7.24 (Debian 13,
    /// checked here through its CRI) reads 0.6.0.
    pub fn newest_cdi(self, release: (u32, u32, u32)) -> Option<Version> {
        let v = |minor| Some(Version(0, minor, 0));
        match self {
            Engine::Podman if release < (4, 1, 0) => None,
            Engine::Podman if release < (4, 7, 0) => v(5),
            Engine::Podman => v(6),
            Engine::Docker if release < (25, 0, 0) => None,
            Engine::Docker => v(6),
            Engine::Containerd if release < (1, 7, 0) => None,
            Engine::Containerd if release < (1, 7, 13) => v(5),
            Engine::Containerd => v(6),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
            Engine::Containerd => "containerd",
        })
    }
}

/// An installed engine and its release, as `--version` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub engine: Engine,
    pub version: String,
    pub release: (u32, u32, u32),
}

/// The first `major.minor[.patch]` in a `--version` line (patch 0 when absent):
/// `podman version 4.3.1`, `Docker version 26.1.5+dfsg1, build 411e817`,
/// `containerd github.com/containerd/containerd 1.7.24~ds1 …`.
pub fn parse_version(line: &str) -> Option<(String, (u32, u32, u32))> {
    line.split_whitespace().find_map(|word| {
        let word = word.trim_start_matches('v').trim_end_matches(',');
        let mut parts = word.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        word.contains('.').then(|| (word.to_owned(), (major, minor, patch)))
    })
}

/// The engines installed in `PATH`, asked for their versions.
pub fn installed() -> Vec<Installed> {
    Engine::ALL
        .into_iter()
        .filter_map(|engine| {
            let out = Command::new(engine.program()).arg("--version").output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let (version, release) = parse_version(text.lines().next()?)?;
            Some(Installed { engine, version, release })
        })
        .collect()
}

/// One line per installed engine that cannot read a spec of version `spec` (needed for `why`).
pub fn warnings(spec: Version, why: &str, engines: &[Installed]) -> Vec<String> {
    engines
        .iter()
        .filter_map(|i| {
            let newest = i.engine.newest_cdi(i.release)?;
            (newest < spec).then(|| {
                format!(
                    "warning: {} {} reads CDI specs up to {newest}, and this spec is {spec} (for {why}): {} cannot use it; set `annotations = false` for a {newest} spec",
                    i.engine, i.version, i.engine
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_each_engines_line() {
        assert_eq!(parse_version("podman version 4.3.1"), Some(("4.3.1".into(), (4, 3, 1))));
        assert_eq!(
            parse_version("Docker version 26.1.5+dfsg1, build 411e817"),
            Some(("26.1.5+dfsg1".into(), (26, 1, 5)))
        );
        assert_eq!(
            parse_version("containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1"),
            Some(("1.7.24~ds1".into(), (1, 7, 24)))
        );
        assert_eq!(parse_version("containerd containerd.io v2.0.4 1a43cb6"), Some(("2.0.4".into(), (2, 0, 4))));
        assert_eq!(parse_version("podman version 5.0"), Some(("5.0".into(), (5, 0, 0))));
        assert_eq!(parse_version("nothing here"), None);
    }

    fn installed(engine: Engine, version: &str) -> Installed {
        let (version, release) = parse_version(version).unwrap();
        Installed { engine, version, release }
    }

    #[test]
    fn warns_for_each_engine_that_cannot_read_the_spec() {
        let engines = [
            installed(Engine::Podman, "4.3.1"),
            installed(Engine::Docker, "26.1.5"),
            installed(Engine::Containerd, "1.7.12"),
            installed(Engine::Containerd, "1.7.24"),
        ];
        let lines = warnings(Version(0, 6, 0), "annotations", &engines);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "warning: podman 4.3.1 reads CDI specs up to 0.5.0, and this spec is 0.6.0 (for annotations): podman cannot use it; set `annotations = false` for a 0.5.0 spec"
        );
        assert!(lines[1].starts_with("warning: containerd 1.7.12 reads CDI specs up to 0.5.0"), "{}", lines[1]);
        assert!(warnings(Version(0, 5, 0), "hostPath", &engines).is_empty());
        let newer = [installed(Engine::Podman, "5.4.0"), installed(Engine::Docker, "20.10.24")];
        assert!(warnings(Version(0, 6, 0), "annotations", &newer).is_empty(), "docker 20.10 has no CDI to warn about");
    }
}
