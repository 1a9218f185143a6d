//! `gatehouse plugin new` and `gatehouse plugin build`: a plugin started from the template in a
//! folder outside this repository builds with what the binary carries, loads, and serves.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// Where the plugin builds of these tests are shared (as `~/.cache/gatehouse/plugin-target` is
/// for an author), so that a rerun does not build the standard library again.
fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-projects")
}

fn gatehouse(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("GATEHOUSE_PLUGIN_TARGET_DIR", shared_target_dir())
        .output()
        .unwrap();
    let text = output_text(&out);
    (out.status.success(), text)
}

/// Every file of a folder, built components aside, with its text.
fn project_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_none_or(|e| e != "wasm") {
                // the bindings' object file too: a path in it would show
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                files.push((path, text));
            }
        }
    }
    files
}

/// Creates a plugin from the `lang` template outside the repository, builds it with
/// `gatehouse plugin build`, and serves it with the project's own gateway configuration.
fn a_plugin_from_the_template_builds_loads_and_serves(lang: &str, name: &str, tests_ran: &str) {
    let outside = scratch_dir();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().unwrap();
    assert!(!outside.starts_with(&repo));

    let (ok, out) = gatehouse(&["plugin", "new", name, "--lang", lang], &outside);
    assert!(ok, "{out}");
    let project = outside.join(name);
    let files = project_files(&project);
    assert!(files.iter().any(|(p, _)| p.ends_with("wit/plugin.wit")));
    for (path, text) in &files {
        assert!(
            !text.contains(repo.to_str().unwrap()),
            "{} names the gateway's checkout",
            path.display()
        );
    }
    // a second `new` into the same folder changes nothing
    let (ok, out) = gatehouse(&["plugin", "new", name, "--lang", lang], &outside);
    assert!(!ok && out.contains("is not empty"), "{out}");

    let (ok, out) = gatehouse(&["plugin", "build"], &project);
    assert!(ok, "{out}");
    assert!(out.contains(tests_ran), "the template's tests ran:\n{out}");
    assert!(
        out.contains(&format!("{name} (0.2.0): hooks on-request, on-response; request_headers.read x-tenant; response_headers.write x-served-for")),
        "the built component loaded with the project's gatehouse.yaml:\n{out}"
    );
    let component = project.join(format!("{name}.wasm"));
    assert!(component.is_file());

    // the project's own configuration, on free ports, serves the plugin
    let (listen, metrics) = (free_port(), free_port());
    let yaml = std::fs::read_to_string(project.join("gatehouse.yaml"))
        .unwrap()
        .replace(
            "  listen: [\"127.0.0.1:8080\"]\n",
            &format!(
                "  listen: [\"127.0.0.1:{listen}\"]\n  metrics: \"127.0.0.1:{metrics}\"\n{}",
                file_roots_for(&component)
            ),
        )
        .replace(&format!("./{name}.wasm"), component.to_str().unwrap());
    let gw = Gateway::start_config(&yaml, listen, metrics);
    let served = request("GET", &gw.url("/hello"), &[("x-tenant", "acme")], None);
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("x-served-for"), Some("acme"));
    assert_eq!(served.body, "hello from behind the plugin\n");
    let refused = request("GET", &gw.url("/hello"), &[("x-tenant", "globex")], None);
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "forbidden");
    let anonymous = request("GET", &gw.url("/hello"), &[], None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["message"], "name your tenant");
}

#[test]
fn a_rust_plugin_from_the_template_builds_outside_the_repository_loads_and_serves() {
    a_plugin_from_the_template_builds_loads_and_serves("rust", "tenant-guard", "3 passed");
}

#[test]
fn a_c_plugin_from_the_template_builds_outside_the_repository_loads_and_serves() {
    a_plugin_from_the_template_builds_loads_and_serves("c", "c-guard", "every check held");
}

#[test]
fn a_failing_test_stops_the_build_and_a_bad_configuration_is_named() {
    let outside = scratch_dir();
    let (ok, out) = gatehouse(&["plugin", "new", "strict"], &outside);
    assert!(ok, "{out}");
    let project = outside.join("strict");

    // the project's gateway configuration gives the plugin a key it does not know
    let yaml = project.join("gatehouse.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace("allow: [acme]", "allow: [acme]\n              deny: [x]"),
    )
    .unwrap();
    let (ok, out) = gatehouse(&["plugin", "build", "--no-test"], &project);
    assert!(!ok, "{out}");
    assert!(
        out.contains("services[0].apis[0].plugins[0].config: plugin strict refused its configuration: invalid configuration: unknown field `deny`"),
        "{out}"
    );

    // a test that fails: nothing is built
    let lib = project.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, text.replace("Some(\"acme\"));", "Some(\"nobody\"));")).unwrap();
    std::fs::remove_file(project.join("strict.wasm")).unwrap();
    let (ok, out) = gatehouse(&["plugin", "build"], &project);
    assert!(!ok, "{out}");
    assert!(out.contains("the tests failed"), "{out}");
    assert!(!project.join("strict.wasm").exists());
}

#[test]
fn bad_names_and_folders_are_refused_with_the_fix() {
    let outside = scratch_dir();
    let (ok, out) = gatehouse(&["plugin", "new", "Tenant_Check"], &outside);
    assert!(!ok);
    assert!(out.contains("lower case letters, digits and `-`"), "{out}");
    let (ok, out) = gatehouse(&["plugin", "build"], &outside);
    assert!(!ok);
    assert!(out.contains("gatehouse plugin new NAME"), "{out}");
}

#[test]
fn a_failing_check_of_a_c_plugin_stops_the_build() {
    let outside = scratch_dir();
    let (ok, out) = gatehouse(&["plugin", "new", "c-strict", "--lang", "c"], &outside);
    assert!(ok, "{out}");
    let project = outside.join("c-strict");
    let test = project.join("tests/test_plugin.c");
    let text = std::fs::read_to_string(&test).unwrap();
    std::fs::write(
        &test,
        text.replace("action.status == 403", "action.status == 418"),
    )
    .unwrap();
    let (ok, out) = gatehouse(&["plugin", "build"], &project);
    assert!(!ok, "{out}");
    assert!(
        out.contains("check failed: action.respond && action.status == 418"),
        "{out}"
    );
    assert!(out.contains("the tests failed"), "{out}");
    assert!(!project.join("c-strict.wasm").exists());
}
