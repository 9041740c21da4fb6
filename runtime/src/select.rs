//! Which slices a container asks for, read from its OCI config at create time.
//!
//! Three places, each of which the node's config may turn off (`[runtime] sources`):
//! the annotation `gpuslice.dev/slices` (containerd's and CRI-O's pass-through annotations,
//! Kubernetes, `podman --annotation`), the variable `GPUSLICE_SLICES` (`docker run -e`), and
//! Docker Swarm's `DOCKER_RESOURCE_GPUSLICE` (the generic resources Swarm assigned the task).
//! A value is a comma-separated list of slice names (`slice0,slice1`), each optionally
//! qualified with the CDI kind (`gpuslice.dev/vgpu=slice0`), or `all`; an empty value or
//! `none` asks for nothing. When several places ask, they must ask for the same slices.
//!
//! This runs as root on the host, before the container exists: what the container does later
//! cannot change what it was given.

use gpuslice_core::cdi;
use gpuslice_core::config::SliceSource;
use serde_json::Value;

/// The annotation that asks for slices.
pub const ANNOTATION: &str = "gpuslice.dev/slices";
/// The variable that asks for slices.
pub const ENV: &str = "GPUSLICE_SLICES";
/// The variable Docker Swarm sets for the generic resource `gpuslice`.
pub const SWARM_ENV: &str = "DOCKER_RESOURCE_GPUSLICE";
/// The device that holds every other one.
pub const ALL: &str = "all";
/// Longest value read.
const MAX_VALUE_LEN: usize = 4096;
/// Annotations that mark a pod's sandbox (pause) container, which never gets a slice even
/// when the pod's annotations ask for one: its containers do.
const SANDBOX_MARKERS: &[(&str, &str)] =
    &[("io.kubernetes.cri.container-type", "sandbox"), ("io.kubernetes.cri-o.ContainerType", "sandbox")];

/// The slices a container asked for, and where it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Device names, unqualified, without repeats, in the order asked; `["all"]` for every one.
    pub names: Vec<String>,
    /// Where the request was read, e.g. `GPUSLICE_SLICES` or `annotation gpuslice.dev/slices`.
    pub from: String,
}

/// Why a request cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{from}={value:?}: {reason}")]
    Malformed { from: String, value: String, reason: String },
    #[error("{first} asks for {first_names} but {second} asks for {second_names}; ask in one place")]
    Conflict { first: String, first_names: String, second: String, second_names: String },
    #[error("{name} is set more than once in the container's environment, with different values")]
    EnvTwice { name: &'static str },
    #[error("the container's OCI config has a malformed {what}")]
    Shape { what: &'static str },
}

/// The slices `config` (an OCI runtime config) asks for through the enabled `sources`;
/// `None` when it asks for none. `kind` is this node's CDI kind, the only one a qualified
/// name may carry.
pub fn requested(config: &Value, sources: &[SliceSource], kind: &str) -> Result<Option<Request>, SelectError> {
    let annotations = match config.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => return Err(SelectError::Shape { what: "annotations (not an object)" }),
    };
    if let Some(a) = annotations
        && SANDBOX_MARKERS.iter().any(|(k, v)| a.get(*k).and_then(Value::as_str) == Some(*v))
    {
        return Ok(None);
    }
    let env = process_env(config)?;
    let mut found: Vec<(String, String)> = Vec::new();
    for source in SliceSource::ALL {
        if !sources.contains(&source) {
            continue;
        }
        let (label, value) = match source {
            SliceSource::Annotation => {
                let value = match annotations.and_then(|a| a.get(ANNOTATION)) {
                    None => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => {
                        return Err(SelectError::Shape { what: "annotation gpuslice.dev/slices (not a string)" });
                    }
                };
                (format!("annotation {ANNOTATION}"), value)
            }
            SliceSource::Env => (ENV.to_owned(), env_value(&env, ENV)?),
            SliceSource::Swarm => (SWARM_ENV.to_owned(), env_value(&env, SWARM_ENV)?),
        };
        if let Some(value) = value {
            found.push((label, value));
        }
    }
    let mut chosen: Option<(String, Vec<String>)> = None;
    for (place, value) in found {
        let Some(names) = parse_value(&place, &value, kind)? else { continue };
        match &chosen {
            None => chosen = Some((place, names)),
            Some((first, first_names)) => {
                let mut a = first_names.clone();
                let mut b = names.clone();
                a.sort();
                b.sort();
                if a != b {
                    return Err(SelectError::Conflict {
                        first: first.clone(),
                        first_names: first_names.join(","),
                        second: place,
                        second_names: names.join(","),
                    });
                }
            }
        }
    }
    Ok(chosen.map(|(from, names)| Request { names, from }))
}

/// `process.env` as `KEY=VALUE` strings.
fn process_env(config: &Value) -> Result<Vec<&str>, SelectError> {
    match config.get("process").and_then(|p| p.get("env")) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(SelectError::Shape { what: "process.env (not a list of strings)" }))
            .collect(),
        Some(_) => Err(SelectError::Shape { what: "process.env (not a list)" }),
    }
}

/// The value of `name`; the same variable twice with different values is refused, since which
/// one the process would see depends on its libc.
fn env_value(env: &[&str], name: &'static str) -> Result<Option<String>, SelectError> {
    let mut value: Option<&str> = None;
    for entry in env {
        if let Some(v) = entry.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')) {
            if value.is_some_and(|old| old != v) {
                return Err(SelectError::EnvTwice { name });
            }
            value = Some(v);
        }
    }
    Ok(value.map(str::to_owned))
}

/// The names in one value; `None` for an empty value or `none`.
fn parse_value(place: &str, value: &str, kind: &str) -> Result<Option<Vec<String>>, SelectError> {
    let bad = |reason: String| SelectError::Malformed {
        from: place.to_owned(),
        value: value.chars().take(200).collect(),
        reason,
    };
    if value.len() > MAX_VALUE_LEN {
        return Err(bad(format!("longer than {MAX_VALUE_LEN} bytes")));
    }
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed == "none" {
        return Ok(None);
    }
    let mut names: Vec<String> = Vec::new();
    for item in trimmed.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("an empty name in the list (expected slice0,slice1 or all)".to_owned()));
        }
        let name = match item.split_once('=') {
            Some((item_kind, name)) if item_kind == kind => name,
            Some((item_kind, _)) => {
                return Err(bad(format!("{item} is a device of kind {item_kind}, not of this node's {kind}")));
            }
            None => item,
        };
        cdi::validate_device_name(name).map_err(|_| {
            bad(format!("{name:?} is not a slice name (letters, digits, `_`, `.`, `:` and `-`, e.g. slice0)"))
        })?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    if names.len() > 1 && names.iter().any(|n| n == ALL) {
        return Err(bad("`all` cannot be combined with other slices".to_owned()));
    }
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const KIND: &str = "gpuslice.dev/vgpu";

    fn ask(config: Value) -> Result<Option<Request>, SelectError> {
        requested(&config, &SliceSource::ALL, KIND)
    }

    fn names(config: Value) -> Option<Vec<String>> {
        ask(config).unwrap().map(|r| r.names)
    }

    fn env(vars: &[&str]) -> Value {
        json!({"process": {"env": vars}})
    }

    #[test]
    fn each_place_asks() {
        assert_eq!(names(env(&["PATH=/bin", "GPUSLICE_SLICES=slice0"])), Some(vec!["slice0".to_owned()]));
        assert_eq!(
            names(env(&["DOCKER_RESOURCE_GPUSLICE=slice2,slice3"])),
            Some(vec!["slice2".into(), "slice3".into()])
        );
        assert_eq!(names(json!({"annotations": {"gpuslice.dev/slices": "all"}})), Some(vec!["all".to_owned()]));
        let r = ask(json!({"annotations": {"gpuslice.dev/slices": "gpuslice.dev/vgpu=slice1"}})).unwrap().unwrap();
        assert_eq!((r.names, r.from.as_str()), (vec!["slice1".to_owned()], "annotation gpuslice.dev/slices"));
    }

    #[test]
    fn nothing_asked_is_none() {
        assert_eq!(names(json!({})), None);
        assert_eq!(names(env(&["GPUSLICE_SLICE=slice0", "GPUSLICE_SLICESX=slice0"])), None);
        assert_eq!(names(env(&["GPUSLICE_SLICES="])), None);
        assert_eq!(names(env(&["GPUSLICE_SLICES=none"])), None);
    }

    #[test]
    fn names_are_trimmed_and_deduplicated() {
        assert_eq!(
            names(env(&["GPUSLICE_SLICES= slice1 , slice0,slice1"])),
            Some(vec!["slice1".into(), "slice0".into()])
        );
    }

    #[test]
    fn malformed_values_are_refused_in_one_line() {
        for value in [
            "slice0,,slice1",
            ",",
            "slice0;rm -rf /",
            "../slice0",
            "all,slice0",
            "other.com/gpu=slice0",
            "slice0\nslice1",
            &"s".repeat(5000),
        ] {
            let e = ask(env(&[&format!("GPUSLICE_SLICES={value}")])).unwrap_err();
            let line = e.to_string();
            assert!(matches!(e, SelectError::Malformed { .. }), "{value:?}: {line}");
            assert!(!line.contains('\n') && line.starts_with("GPUSLICE_SLICES="), "{line}");
        }
    }

    #[test]
    fn places_that_disagree_are_refused() {
        let config = json!({
            "process": {"env": ["GPUSLICE_SLICES=slice0", "DOCKER_RESOURCE_GPUSLICE=slice1"]},
        });
        let e = ask(config).unwrap_err().to_string();
        assert_eq!(e, "GPUSLICE_SLICES asks for slice0 but DOCKER_RESOURCE_GPUSLICE asks for slice1; ask in one place");
        let config = json!({
            "annotations": {"gpuslice.dev/slices": "slice1,slice0"},
            "process": {"env": ["GPUSLICE_SLICES=slice0,slice1"]},
        });
        assert_eq!(ask(config).unwrap().unwrap().names, ["slice1", "slice0"]);
        let e = ask(env(&["GPUSLICE_SLICES=slice0", "GPUSLICE_SLICES=slice1"])).unwrap_err();
        assert_eq!(e, SelectError::EnvTwice { name: ENV });
    }

    #[test]
    fn a_source_turned_off_is_not_read() {
        let config = env(&["GPUSLICE_SLICES=slice0"]);
        assert_eq!(requested(&config, &[SliceSource::Annotation, SliceSource::Swarm], KIND).unwrap(), None);
        let config =
            json!({"annotations": {"gpuslice.dev/slices": "slice1"}, "process": {"env": ["GPUSLICE_SLICES=x,,"]}});
        assert_eq!(requested(&config, &[SliceSource::Annotation], KIND).unwrap().unwrap().names, ["slice1"]);
    }

    #[test]
    fn a_pod_sandbox_gets_no_slice() {
        let config = json!({"annotations": {
            "gpuslice.dev/slices": "slice0",
            "io.kubernetes.cri.container-type": "sandbox",
        }});
        assert_eq!(names(config), None);
        let config = json!({"annotations": {
            "gpuslice.dev/slices": "slice0",
            "io.kubernetes.cri.container-type": "container",
        }});
        assert_eq!(names(config), Some(vec!["slice0".to_owned()]));
    }

    #[test]
    fn a_malformed_config_is_refused() {
        assert!(matches!(ask(json!({"process": {"env": "GPUSLICE_SLICES=slice0"}})), Err(SelectError::Shape { .. })));
        assert!(matches!(ask(json!({"process": {"env": [1]}})), Err(SelectError::Shape { .. })));
        assert!(matches!(ask(json!({"annotations": {"gpuslice.dev/slices": 0}})), Err(SelectError::Shape { .. })));
    }
}
