//! `gpuslice-cdi validate` agrees with the reference CDI library, spec by spec.

mod common;

use common::*;

const GOOD: &str = r#"cdiVersion: 0.6.0
kind: gpuslice.dev/vgpu
annotations:
  gpuslice.dev/driver-version: 580.95.05
devices:
- name: slice0
  containerEdits:
    env: [GPUSLICE_SLICE=slice0]
    deviceNodes:
    - path: /dev/nvidia0
      hostPath: /dev/nvidia0
      type: c
      major: 195
      minor: 0
    hooks:
    - hookName: createContainer
      path: /usr/bin/gpuslice-hook
      args: [gpuslice-hook, create-container, --slice, slice0]
      env: [PATH=/usr/bin]
"#;

fn check(name: &str, text: &str, valid: bool) {
    let node = Node::new(0, false);
    let path = node.root().join(name);
    std::fs::write(&path, text).unwrap();
    let ours = node.cdi(&["validate", path.to_str().unwrap()]);
    let reference = reference_load(&path);
    assert_eq!(reference.is_ok(), valid, "reference library on {name}: {reference:?}");
    if valid {
        ok(ours);
    } else {
        fails_with(&ours, &[]);
    }
}

#[test]
fn good_spec_is_accepted() {
    check("good.yaml", GOOD, true);
    check(
        "good.json",
        &serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(GOOD).unwrap()).unwrap(),
        true,
    );
}

#[test]
fn bad_specs_are_refused_like_the_reference_does() {
    let cases = [
        ("version-too-low.yaml", GOOD.replace("cdiVersion: 0.6.0", "cdiVersion: 0.5.0")),
        ("unknown-version.yaml", GOOD.replace("cdiVersion: 0.6.0", "cdiVersion: 9.9.9")),
        ("unknown-field.yaml", GOOD.replace("      minor: 0", "      minor: 0\n      colour: red")),
        ("bad-kind.yaml", GOOD.replace("kind: gpuslice.dev/vgpu", "kind: vgpu")),
        ("bad-name.yaml", GOOD.replace("- name: slice0", "- name: -slice0")),
        ("bad-env.yaml", GOOD.replace("env: [GPUSLICE_SLICE=slice0]", "env: [=oops]")),
        ("bad-hook.yaml", GOOD.replace("hookName: createContainer", "hookName: afterParty")),
        ("bad-node-type.yaml", GOOD.replace("type: c", "type: x")),
        ("empty-device.yaml", format!("{GOOD}- name: empty\n  containerEdits: {{}}\n")),
        ("no-devices.yaml", "cdiVersion: 0.6.0\nkind: gpuslice.dev/vgpu\ndevices: []\n".to_owned()),
        ("not-yaml.yaml", "{{{{".to_owned()),
    ];
    for (name, text) in cases {
        check(name, &text, false);
    }
}

#[test]
fn generated_spec_validates() {
    if skip_unless_root("generated_spec_validates") {
        return;
    }
    let node = Node::new(2, true);
    node.config("[defaults]\nsplit_count = 3\n");
    ok(node.cdi(&["generate"]));
    let out = ok(node.cdi(&["validate", node.spec_path().to_str().unwrap()]));
    assert!(stdout(&out).contains("valid CDI 0.5.0 spec of kind gpuslice.dev/vgpu with 7 devices"), "{}", stdout(&out));
}

#[test]
fn missing_file_is_one_line() {
    let node = Node::new(0, false);
    let out = node.cdi(&["validate", "/nonexistent/spec.yaml"]);
    fails_with(&out, &["/nonexistent/spec.yaml"]);
}
